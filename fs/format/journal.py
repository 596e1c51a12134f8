"""The jbd2 journal superblock (big-endian), and whether a journal needs recovery.

The journal lives in an inode (``s_journal_inum``, usually 8); its first block starts
with this superblock.  chanos does not replay journals yet, so mount must refuse a
file system whose journal holds transactions: the fs superblock has the RECOVER
incompat flag, or the journal superblock's ``s_start`` is non-zero.
"""

from __future__ import annotations

from chanos.fs.format import features as F
from chanos.fs.format._record import CorruptError, Record, field_names
from construct import Bytes, Int8ub, Int32sb, Int32ub, Struct

JBD2_MAGIC = 0xC03B3998
BLOCKTYPE_DESCRIPTOR = 1
BLOCKTYPE_COMMIT = 2
BLOCKTYPE_SUPERBLOCK_V1 = 3
BLOCKTYPE_SUPERBLOCK_V2 = 4
BLOCKTYPE_REVOKE = 5

FEATURE_COMPAT_CHECKSUM = 0x1
FEATURE_INCOMPAT_REVOKE = 0x1
FEATURE_INCOMPAT_64BIT = 0x2
FEATURE_INCOMPAT_ASYNC_COMMIT = 0x4
FEATURE_INCOMPAT_CSUM_V2 = 0x8
FEATURE_INCOMPAT_CSUM_V3 = 0x10
FEATURE_INCOMPAT_FAST_COMMIT = 0x20

JOURNAL_SUPERBLOCK_STRUCT = Struct(
    "h_magic" / Int32ub,  # 0x00
    "h_blocktype" / Int32ub,
    "h_sequence" / Int32ub,
    "blocksize" / Int32ub,  # 0x0C
    "maxlen" / Int32ub,  # journal length in blocks
    "first" / Int32ub,  # first block of log information
    "sequence" / Int32ub,  # 0x18: first commit ID expected in log
    "start" / Int32ub,  # block number of the start of log; 0 = clean
    "errno" / Int32sb,  # 0x20
    "feature_compat" / Int32ub,  # v2 from here
    "feature_incompat" / Int32ub,
    "feature_ro_compat" / Int32ub,
    "uuid" / Bytes(16),  # 0x30
    "nr_users" / Int32ub,  # 0x40
    "dynsuper" / Int32ub,
    "max_transaction" / Int32ub,
    "max_trans_data" / Int32ub,
    "checksum_type" / Int8ub,  # 0x50
    "padding2" / Bytes(3),
    "num_fc_blks" / Int32ub,  # 0x54
    "head" / Int32ub,  # 0x58
    "padding" / Bytes(160),  # 0x5C: 40 x be32
    "checksum" / Int32ub,  # 0xFC
    "users" / Bytes(768),  # 0x100: 16 x 48 bytes
)


class JournalSuperblock(Record):
    """The first 1024 bytes of the journal's first block."""

    __slots__ = field_names(JOURNAL_SUPERBLOCK_STRUCT)
    _struct = JOURNAL_SUPERBLOCK_STRUCT

    @classmethod
    def parse_checked(cls, raw: bytes | bytearray | memoryview) -> JournalSuperblock:
        jsb = cls.parse(raw)
        if jsb.h_magic != JBD2_MAGIC:
            raise CorruptError(f"bad journal superblock magic {jsb.h_magic:#010x}")
        if jsb.h_blocktype not in (BLOCKTYPE_SUPERBLOCK_V1, BLOCKTYPE_SUPERBLOCK_V2):
            raise CorruptError(f"bad journal superblock type {jsb.h_blocktype}")
        if jsb.blocksize < 1024 or jsb.blocksize & (jsb.blocksize - 1):
            raise CorruptError(f"bad journal block size {jsb.blocksize}")
        return jsb

    @property
    def is_v2(self) -> bool:
        return self.h_blocktype == BLOCKTYPE_SUPERBLOCK_V2

    @property
    def is_clean(self) -> bool:
        """No transactions to replay (``s_start == 0``)."""
        return self.start == 0


JournalSuperblock._setup()
assert JournalSuperblock.SIZE == 1024


def needs_recovery(fs_feature_incompat: int, jsb: JournalSuperblock | None) -> bool:
    """Whether the journal must be replayed before the file system may be used.

    ``fs_feature_incompat`` is the fs superblock's incompat word; ``jsb`` the journal
    superblock (None if it was not read).
    """
    if fs_feature_incompat & F.INCOMPAT_RECOVER:
        return True
    return jsb is not None and jsb.start != 0
