"""The ext2/3/4 superblock: 1024 bytes at byte offset 1024 of the volume.

``Superblock.parse(raw)`` decodes all 1024 bytes into named attributes (the kernel's
``s_`` names without the prefix); ``build()`` re-encodes them.  Reserved areas are kept
as raw bytes, so a round trip is byte-identical.  64-bit quantities stored as lo/hi
halves are exposed as one property (``blocks_count``, ``r_blocks_count``,
``free_blocks_count``).  Also here: the geometry derived from the superblock (block
size, group count, descriptor size, where backup superblocks live).
"""

from __future__ import annotations

import uuid as _uuid

from chanos.fs.format import features as F
from chanos.fs.format._record import CorruptError, Record, field_names, split64
from construct import Bytes, Int8ul, Int16ul, Int32ul, Int64ul, Struct

SUPERBLOCK_OFFSET = 1024
SUPERBLOCK_SIZE = 1024
MAGIC = 0xEF53

STATE_VALID = 0x0001  # cleanly unmounted
STATE_ERROR = 0x0002  # errors detected
STATE_ORPHAN = 0x0004  # orphans being recovered

ERRORS_CONTINUE = 1
ERRORS_RO = 2
ERRORS_PANIC = 3

FLAG_SIGNED_HASH = 0x0001
FLAG_UNSIGNED_HASH = 0x0002

GOOD_OLD_REV = 0
DYNAMIC_REV = 1
GOOD_OLD_INODE_SIZE = 128
GOOD_OLD_FIRST_INO = 11

SUPERBLOCK_STRUCT = Struct(
    "inodes_count" / Int32ul,  # 0x00
    "blocks_count_lo" / Int32ul,
    "r_blocks_count_lo" / Int32ul,
    "free_blocks_count_lo" / Int32ul,
    "free_inodes_count" / Int32ul,  # 0x10
    "first_data_block" / Int32ul,
    "log_block_size" / Int32ul,
    "log_cluster_size" / Int32ul,
    "blocks_per_group" / Int32ul,  # 0x20
    "clusters_per_group" / Int32ul,
    "inodes_per_group" / Int32ul,
    "mtime" / Int32ul,
    "wtime" / Int32ul,  # 0x30
    "mnt_count" / Int16ul,
    "max_mnt_count" / Int16ul,
    "magic" / Int16ul,
    "state" / Int16ul,
    "errors" / Int16ul,
    "minor_rev_level" / Int16ul,
    "lastcheck" / Int32ul,  # 0x40
    "checkinterval" / Int32ul,
    "creator_os" / Int32ul,
    "rev_level" / Int32ul,
    "def_resuid" / Int16ul,  # 0x50
    "def_resgid" / Int16ul,
    "first_ino" / Int32ul,
    "inode_size" / Int16ul,
    "block_group_nr" / Int16ul,
    "feature_compat" / Int32ul,
    "feature_incompat" / Int32ul,  # 0x60
    "feature_ro_compat" / Int32ul,
    "uuid" / Bytes(16),  # 0x68
    "volume_name" / Bytes(16),  # 0x78
    "last_mounted" / Bytes(64),  # 0x88
    "algorithm_usage_bitmap" / Int32ul,  # 0xC8
    "prealloc_blocks" / Int8ul,
    "prealloc_dir_blocks" / Int8ul,
    "reserved_gdt_blocks" / Int16ul,
    "journal_uuid" / Bytes(16),  # 0xD0
    "journal_inum" / Int32ul,  # 0xE0
    "journal_dev" / Int32ul,
    "last_orphan" / Int32ul,
    "hash_seed" / Bytes(16),  # 0xEC
    "def_hash_version" / Int8ul,  # 0xFC
    "jnl_backup_type" / Int8ul,
    "desc_size" / Int16ul,
    "default_mount_opts" / Int32ul,  # 0x100
    "first_meta_bg" / Int32ul,
    "mkfs_time" / Int32ul,
    "jnl_blocks" / Bytes(68),  # 0x10C: 17 x le32, a copy of the journal inode's i_block
    "blocks_count_hi" / Int32ul,  # 0x150
    "r_blocks_count_hi" / Int32ul,
    "free_blocks_count_hi" / Int32ul,
    "min_extra_isize" / Int16ul,
    "want_extra_isize" / Int16ul,
    "flags" / Int32ul,  # 0x160
    "raid_stride" / Int16ul,
    "mmp_interval" / Int16ul,
    "mmp_block" / Int64ul,
    "raid_stripe_width" / Int32ul,  # 0x170
    "log_groups_per_flex" / Int8ul,
    "checksum_type" / Int8ul,
    "reserved_pad" / Int16ul,
    "kbytes_written" / Int64ul,  # 0x178
    "snapshot_inum" / Int32ul,  # 0x180
    "snapshot_id" / Int32ul,
    "snapshot_r_blocks_count" / Int64ul,
    "snapshot_list" / Int32ul,  # 0x190
    "error_count" / Int32ul,
    "first_error_time" / Int32ul,
    "first_error_ino" / Int32ul,
    "first_error_block" / Int64ul,  # 0x1A0
    "first_error_func" / Bytes(32),  # 0x1A8
    "first_error_line" / Int32ul,  # 0x1C8
    "last_error_time" / Int32ul,
    "last_error_ino" / Int32ul,
    "last_error_line" / Int32ul,
    "last_error_block" / Int64ul,  # 0x1D8
    "last_error_func" / Bytes(32),  # 0x1E0
    "mount_opts" / Bytes(64),  # 0x200
    "usr_quota_inum" / Int32ul,  # 0x240
    "grp_quota_inum" / Int32ul,
    "overhead_clusters" / Int32ul,
    "backup_bgs" / Bytes(8),  # 0x24C: 2 x le32
    "encrypt_algos" / Bytes(4),  # 0x254
    "encrypt_pw_salt" / Bytes(16),  # 0x258
    "lpf_ino" / Int32ul,  # 0x268
    "prj_quota_inum" / Int32ul,
    "checksum_seed" / Int32ul,  # 0x270
    "wtime_hi" / Int8ul,
    "mtime_hi" / Int8ul,
    "mkfs_time_hi" / Int8ul,
    "lastcheck_hi" / Int8ul,
    "first_error_time_hi" / Int8ul,
    "last_error_time_hi" / Int8ul,
    "first_error_errcode" / Int8ul,
    "last_error_errcode" / Int8ul,
    "encoding" / Int16ul,  # 0x27C
    "encoding_flags" / Int16ul,
    "orphan_file_inum" / Int32ul,  # 0x280
    "reserved" / Bytes(376),  # 0x284: 94 x le32
    "checksum" / Int32ul,  # 0x3FC
)


class GroupArithmetic:
    """Feature tests and group arithmetic over the superblock's numbers; shared by
    ``Superblock`` and the volume's fixed ``Geometry`` so there is one way to do each."""

    __slots__ = ()

    feature_compat: int
    feature_incompat: int
    feature_ro_compat: int
    first_data_block: int
    blocks_per_group: int
    inodes_per_group: int

    def has_compat(self, bit: int) -> bool:
        return bool(self.feature_compat & bit)

    def has_incompat(self, bit: int) -> bool:
        return bool(self.feature_incompat & bit)

    def has_ro_compat(self, bit: int) -> bool:
        return bool(self.feature_ro_compat & bit)

    def group_first_block(self, group: int) -> int:
        return self.first_data_block + group * self.blocks_per_group

    def group_of_block(self, block: int) -> int:
        return (block - self.first_data_block) // self.blocks_per_group

    def group_of_inode(self, ino: int) -> int:
        return (ino - 1) // self.inodes_per_group


class Superblock(Record, GroupArithmetic):
    """The superblock as a mutable record.  See the module docstring."""

    __slots__ = field_names(SUPERBLOCK_STRUCT)
    _struct = SUPERBLOCK_STRUCT

    @classmethod
    def parse_checked(cls, raw: bytes | bytearray | memoryview) -> Superblock:
        """Parse and validate the geometry; raise CorruptError with a clear reason."""
        sb = cls.parse(raw)
        sb.validate()
        return sb

    def validate(self) -> None:
        """Reject superblocks whose geometry would make later arithmetic lie."""
        if self.magic != MAGIC:
            raise CorruptError(f"bad superblock magic {self.magic:#06x} (not ext2/3/4)")
        if self.log_block_size > 6:
            raise CorruptError(f"bad block size 2^(10+{self.log_block_size})")
        if self.blocks_per_group == 0 or self.inodes_per_group == 0:
            raise CorruptError("zero blocks or inodes per group")
        # The block bitmap has one bit per cluster (= block without bigalloc).
        per_group = (
            self.clusters_per_group
            if self.feature_ro_compat & F.RO_COMPAT_BIGALLOC
            else self.blocks_per_group
        )
        if per_group == 0 or per_group > 8 * self.block_size:
            raise CorruptError(f"blocks per group {self.blocks_per_group} exceeds bitmap")
        if self.inodes_per_group > 8 * self.block_size:
            raise CorruptError(f"inodes per group {self.inodes_per_group} exceeds bitmap")
        isz = self.inode_size_bytes
        if isz < GOOD_OLD_INODE_SIZE or isz > self.block_size or isz & (isz - 1):
            raise CorruptError(f"bad inode size {isz}")
        if self.blocks_count <= self.first_data_block:
            raise CorruptError(f"bad first data block {self.first_data_block}")
        if self.inodes_count != self.group_count * self.inodes_per_group:
            raise CorruptError(
                f"inode count {self.inodes_count} != {self.group_count} groups x "
                f"{self.inodes_per_group}"
            )
        if self.is_64bit and (
            self.desc_size < 64 or self.desc_size > 1024 or self.desc_size & (self.desc_size - 1)
        ):
            raise CorruptError(f"bad group descriptor size {self.desc_size}")
        if self.rev_level >= DYNAMIC_REV and self.first_ino < GOOD_OLD_FIRST_INO:
            raise CorruptError(f"bad first inode {self.first_ino}")
        if self.extra_isize_limit and self.want_extra_isize > self.extra_isize_limit:
            raise CorruptError(f"bad desired extra isize {self.want_extra_isize}")

    # --- combined 64-bit counters -------------------------------------------------

    @property
    def blocks_count(self) -> int:
        hi = self.blocks_count_hi if self.is_64bit else 0
        return self.blocks_count_lo | hi << 32

    @blocks_count.setter
    def blocks_count(self, value: int) -> None:
        self.blocks_count_lo, hi = split64(value)
        self._set_hi("blocks_count_hi", hi)

    @property
    def r_blocks_count(self) -> int:
        hi = self.r_blocks_count_hi if self.is_64bit else 0
        return self.r_blocks_count_lo | hi << 32

    @r_blocks_count.setter
    def r_blocks_count(self, value: int) -> None:
        self.r_blocks_count_lo, hi = split64(value)
        self._set_hi("r_blocks_count_hi", hi)

    @property
    def free_blocks_count(self) -> int:
        hi = self.free_blocks_count_hi if self.is_64bit else 0
        return self.free_blocks_count_lo | hi << 32

    @free_blocks_count.setter
    def free_blocks_count(self, value: int) -> None:
        self.free_blocks_count_lo, hi = split64(value)
        self._set_hi("free_blocks_count_hi", hi)

    def _set_hi(self, name: str, hi: int) -> None:
        if hi and not self.is_64bit:
            raise ValueError(f"{name[:-3]} needs the 64bit feature")
        if self.is_64bit:
            setattr(self, name, hi)

    # --- timestamps (seconds; 40 bits with the *_hi bytes) ---------------------------

    _TIME_FIELDS = (
        "mtime",
        "wtime",
        "mkfs_time",
        "lastcheck",
        "first_error_time",
        "last_error_time",
    )

    def get_time(self, name: str) -> int:
        """Seconds since the epoch of a superblock time (e.g. "wtime"), with its hi byte."""
        if name not in self._TIME_FIELDS:
            raise KeyError(name)
        return getattr(self, name) | getattr(self, name + "_hi") << 32

    def set_time(self, name: str, seconds: int) -> None:
        """Store a superblock time: low 32 bits plus the hi byte (clamped to 0..2^40-1)."""
        if name not in self._TIME_FIELDS:
            raise KeyError(name)
        seconds = min(max(seconds, 0), (1 << 40) - 1)
        setattr(self, name, seconds & 0xFFFFFFFF)
        setattr(self, name + "_hi", seconds >> 32)

    # --- features -------------------------------------------------------------------

    def has_feature(self, name: str) -> bool:
        """Test a feature by its e2fsprogs name, e.g. ``sb.has_feature("huge_file")``."""
        word, bit = F.lookup(name)
        return bool(getattr(self, "feature_" + word) & bit)

    @property
    def feature_names(self) -> list[str]:
        return F.feature_names(self.feature_compat, self.feature_incompat, self.feature_ro_compat)

    @property
    def is_64bit(self) -> bool:
        return bool(self.feature_incompat & F.INCOMPAT_64BIT)

    @property
    def huge_file(self) -> bool:
        return bool(self.feature_ro_compat & F.RO_COMPAT_HUGE_FILE)

    @property
    def needs_recovery(self) -> bool:
        return bool(self.feature_incompat & F.INCOMPAT_RECOVER)

    # --- geometry -------------------------------------------------------------------

    @property
    def block_size(self) -> int:
        return 1024 << self.log_block_size

    @property
    def inode_size_bytes(self) -> int:
        """On-disk inode record size (128 on revision 0 file systems)."""
        return self.inode_size if self.rev_level >= DYNAMIC_REV else GOOD_OLD_INODE_SIZE

    @property
    def first_inode(self) -> int:
        """First inode number available to ordinary files (11 on revision 0)."""
        return self.first_ino if self.rev_level >= DYNAMIC_REV else GOOD_OLD_FIRST_INO

    @property
    def extra_isize_limit(self) -> int:
        """Largest i_extra_isize an inode of this size can have."""
        return max(0, self.inode_size_bytes - GOOD_OLD_INODE_SIZE)

    @property
    def group_count(self) -> int:
        return -(-(self.blocks_count - self.first_data_block) // self.blocks_per_group)

    @property
    def group_desc_size(self) -> int:
        """Bytes per group descriptor: 32, or s_desc_size with the 64bit feature."""
        return self.desc_size if self.is_64bit else 32

    @property
    def descs_per_block(self) -> int:
        return self.block_size // self.group_desc_size

    @property
    def gdt_blocks(self) -> int:
        """Blocks taken by the group descriptor table (without reserved GDT blocks)."""
        return -(-self.group_count // self.descs_per_block)

    @property
    def gdt_first_block(self) -> int:
        """Block number of the primary group descriptor table."""
        return self.first_data_block + 1

    @property
    def inode_table_blocks(self) -> int:
        """Blocks of inode table per group."""
        return -(-self.inodes_per_group * self.inode_size_bytes // self.block_size)

    def group_blocks(self, group: int) -> int:
        """Blocks in ``group`` (the last group may be short)."""
        if group == self.group_count - 1:
            return self.blocks_count - self.group_first_block(group)
        return self.blocks_per_group

    def inode_index_in_group(self, ino: int) -> int:
        return (ino - 1) % self.inodes_per_group

    def group_has_super(self, group: int) -> bool:
        """Whether ``group`` holds a superblock (+ GDT) copy.

        Group 0 always; with sparse_super only groups 0, 1 and powers of 3, 5, 7; with
        sparse_super2 only the two groups named in s_backup_bgs.
        """
        if group == 0:
            return True
        if self.feature_compat & F.COMPAT_SPARSE_SUPER2:
            b0 = int.from_bytes(self.backup_bgs[0:4], "little")
            b1 = int.from_bytes(self.backup_bgs[4:8], "little")
            return group in (b0, b1)
        if not self.feature_ro_compat & F.RO_COMPAT_SPARSE_SUPER:
            return True
        if group <= 1:
            return True
        if not group & 1:
            return False
        return _is_power_of(group, 3) or _is_power_of(group, 5) or _is_power_of(group, 7)

    def group_super_overhead(self, group: int) -> int:
        """Blocks at the start of ``group`` for superblock + GDT + reserved GDT copies.

        Valid without meta_bg (chanos refuses meta_bg images).
        """
        if not self.group_has_super(group):
            return 0
        # With 1 KiB blocks group 0 starts at block 1 with the superblock itself.
        return 1 + self.gdt_blocks + self.reserved_gdt_blocks

    # --- convenience --------------------------------------------------------------

    @property
    def uuid_str(self) -> str:
        return str(_uuid.UUID(bytes=bytes(self.uuid)))

    @property
    def volume_label(self) -> bytes:
        return bytes(self.volume_name).split(b"\0", 1)[0]

    @property
    def hash_seed_words(self) -> tuple[int, int, int, int]:
        s = bytes(self.hash_seed)
        return tuple(int.from_bytes(s[i : i + 4], "little") for i in range(0, 16, 4))  # type: ignore[return-value]

    @property
    def is_clean(self) -> bool:
        return bool(self.state & STATE_VALID) and not self.state & STATE_ERROR


def _is_power_of(n: int, base: int) -> bool:
    while n % base == 0:
        n //= base
    return n == 1


Superblock._setup()
assert Superblock.SIZE == SUPERBLOCK_SIZE
