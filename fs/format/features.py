"""Superblock feature flags: names, what chanos supports, and the mount-time check.

ext4 has three feature words.  A *compat* feature may be ignored by an implementation
that does not know it; an unknown *ro_compat* feature allows a read-only mount only;
an unknown *incompat* feature forbids mounting at all.  Names are the ones e2fsprogs
prints (``dumpe2fs -h``, ``mkfs.ext4 -O``); a bit without a name prints as e2fsprogs
does, ``FEATURE_C12`` / ``FEATURE_I31`` / ``FEATURE_R20``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

# --- s_feature_compat ---------------------------------------------------------------
COMPAT_DIR_PREALLOC = 0x0001
COMPAT_IMAGIC_INODES = 0x0002
COMPAT_HAS_JOURNAL = 0x0004
COMPAT_EXT_ATTR = 0x0008
COMPAT_RESIZE_INODE = 0x0010
COMPAT_DIR_INDEX = 0x0020
COMPAT_LAZY_BG = 0x0040
COMPAT_EXCLUDE_BITMAP = 0x0100
COMPAT_SPARSE_SUPER2 = 0x0200
COMPAT_FAST_COMMIT = 0x0400
COMPAT_STABLE_INODES = 0x0800
COMPAT_ORPHAN_FILE = 0x1000

# --- s_feature_incompat -------------------------------------------------------------
INCOMPAT_COMPRESSION = 0x0001
INCOMPAT_FILETYPE = 0x0002
INCOMPAT_RECOVER = 0x0004  # journal needs recovery
INCOMPAT_JOURNAL_DEV = 0x0008
INCOMPAT_META_BG = 0x0010
INCOMPAT_EXTENTS = 0x0040
INCOMPAT_64BIT = 0x0080
INCOMPAT_MMP = 0x0100
INCOMPAT_FLEX_BG = 0x0200
INCOMPAT_EA_INODE = 0x0400
INCOMPAT_DIRDATA = 0x1000
INCOMPAT_CSUM_SEED = 0x2000
INCOMPAT_LARGEDIR = 0x4000
INCOMPAT_INLINE_DATA = 0x8000
INCOMPAT_ENCRYPT = 0x10000
INCOMPAT_CASEFOLD = 0x20000

# --- s_feature_ro_compat ------------------------------------------------------------
RO_COMPAT_SPARSE_SUPER = 0x0001
RO_COMPAT_LARGE_FILE = 0x0002
RO_COMPAT_BTREE_DIR = 0x0004
RO_COMPAT_HUGE_FILE = 0x0008
RO_COMPAT_GDT_CSUM = 0x0010  # "uninit_bg"
RO_COMPAT_DIR_NLINK = 0x0020
RO_COMPAT_EXTRA_ISIZE = 0x0040
RO_COMPAT_HAS_SNAPSHOT = 0x0080
RO_COMPAT_QUOTA = 0x0100
RO_COMPAT_BIGALLOC = 0x0200
RO_COMPAT_METADATA_CSUM = 0x0400
RO_COMPAT_REPLICA = 0x0800
RO_COMPAT_READONLY = 0x1000
RO_COMPAT_PROJECT = 0x2000
RO_COMPAT_SHARED_BLOCKS = 0x4000
RO_COMPAT_VERITY = 0x8000
RO_COMPAT_ORPHAN_PRESENT = 0x10000

COMPAT_NAMES: dict[int, str] = {
    COMPAT_DIR_PREALLOC: "dir_prealloc",
    COMPAT_IMAGIC_INODES: "imagic_inodes",
    COMPAT_HAS_JOURNAL: "has_journal",
    COMPAT_EXT_ATTR: "ext_attr",
    COMPAT_RESIZE_INODE: "resize_inode",
    COMPAT_DIR_INDEX: "dir_index",
    COMPAT_LAZY_BG: "lazy_bg",
    COMPAT_EXCLUDE_BITMAP: "snapshot_bitmap",
    COMPAT_SPARSE_SUPER2: "sparse_super2",
    COMPAT_FAST_COMMIT: "fast_commit",
    COMPAT_STABLE_INODES: "stable_inodes",
    COMPAT_ORPHAN_FILE: "orphan_file",
}

INCOMPAT_NAMES: dict[int, str] = {
    INCOMPAT_COMPRESSION: "compression",
    INCOMPAT_FILETYPE: "filetype",
    INCOMPAT_RECOVER: "needs_recovery",
    INCOMPAT_JOURNAL_DEV: "journal_dev",
    INCOMPAT_META_BG: "meta_bg",
    INCOMPAT_EXTENTS: "extent",
    INCOMPAT_64BIT: "64bit",
    INCOMPAT_MMP: "mmp",
    INCOMPAT_FLEX_BG: "flex_bg",
    INCOMPAT_EA_INODE: "ea_inode",
    INCOMPAT_DIRDATA: "dirdata",
    INCOMPAT_CSUM_SEED: "metadata_csum_seed",
    INCOMPAT_LARGEDIR: "large_dir",
    INCOMPAT_INLINE_DATA: "inline_data",
    INCOMPAT_ENCRYPT: "encrypt",
    INCOMPAT_CASEFOLD: "casefold",
}

RO_COMPAT_NAMES: dict[int, str] = {
    RO_COMPAT_SPARSE_SUPER: "sparse_super",
    RO_COMPAT_LARGE_FILE: "large_file",
    RO_COMPAT_BTREE_DIR: "btree_dir",
    RO_COMPAT_HUGE_FILE: "huge_file",
    RO_COMPAT_GDT_CSUM: "uninit_bg",
    RO_COMPAT_DIR_NLINK: "dir_nlink",
    RO_COMPAT_EXTRA_ISIZE: "extra_isize",
    RO_COMPAT_HAS_SNAPSHOT: "snapshot",
    RO_COMPAT_QUOTA: "quota",
    RO_COMPAT_BIGALLOC: "bigalloc",
    RO_COMPAT_METADATA_CSUM: "metadata_csum",
    RO_COMPAT_REPLICA: "replica",
    RO_COMPAT_READONLY: "read-only",
    RO_COMPAT_PROJECT: "project",
    RO_COMPAT_SHARED_BLOCKS: "shared_blocks",
    RO_COMPAT_VERITY: "verity",
    RO_COMPAT_ORPHAN_PRESENT: "orphan_present",
}

# What chanos implements.  Compat features never block a mount; the set below is the
# ones whose on-disk structures chanos keeps valid while writing (a mount that writes
# clears nothing it does not know: unknown compat bits are simply preserved).
SUPPORTED_COMPAT = COMPAT_HAS_JOURNAL | COMPAT_EXT_ATTR | COMPAT_RESIZE_INODE | COMPAT_DIR_INDEX
# RECOVER is not in this set: it is a state, not a format feature, and has its own
# check (``journal.needs_recovery``) with its own message.
SUPPORTED_INCOMPAT = INCOMPAT_FILETYPE | INCOMPAT_EXTENTS | INCOMPAT_64BIT | INCOMPAT_FLEX_BG
SUPPORTED_RO_COMPAT = (
    RO_COMPAT_SPARSE_SUPER
    | RO_COMPAT_LARGE_FILE
    | RO_COMPAT_HUGE_FILE
    | RO_COMPAT_DIR_NLINK
    | RO_COMPAT_EXTRA_ISIZE
)


def _names(bits: int, table: dict[int, str], letter: str) -> list[str]:
    out = []
    for i in range(32):
        bit = 1 << i
        if bits & bit:
            out.append(table.get(bit, f"FEATURE_{letter}{i}"))
    return out


def compat_names(bits: int) -> list[str]:
    """Names of the set compat bits, lowest bit first."""
    return _names(bits, COMPAT_NAMES, "C")


def incompat_names(bits: int) -> list[str]:
    """Names of the set incompat bits, lowest bit first."""
    return _names(bits, INCOMPAT_NAMES, "I")


def ro_compat_names(bits: int) -> list[str]:
    """Names of the set ro_compat bits, lowest bit first."""
    return _names(bits, RO_COMPAT_NAMES, "R")


def feature_names(compat: int, incompat: int, ro_compat: int) -> list[str]:
    """All feature names in the order ``dumpe2fs`` prints them (compat, incompat, ro)."""
    return compat_names(compat) + incompat_names(incompat) + ro_compat_names(ro_compat)


_BY_NAME: dict[str, tuple[str, int]] = {}
for _bit, _n in COMPAT_NAMES.items():
    _BY_NAME[_n] = ("compat", _bit)
for _bit, _n in INCOMPAT_NAMES.items():
    _BY_NAME[_n] = ("incompat", _bit)
for _bit, _n in RO_COMPAT_NAMES.items():
    _BY_NAME[_n] = ("ro_compat", _bit)
_BY_NAME["extents"] = ("incompat", INCOMPAT_EXTENTS)  # e2fsprogs accepts both spellings


def lookup(name: str) -> tuple[str, int]:
    """(word, bit) for a feature name: word is "compat", "incompat" or "ro_compat"."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise KeyError(f"unknown ext4 feature {name!r}") from None


class _HasFeatures(Protocol):
    feature_compat: int
    feature_incompat: int
    feature_ro_compat: int


@dataclass(frozen=True, slots=True)
class FeatureCheck:
    """Outcome of checking a superblock's features against what chanos supports.

    ``unsupported_incompat`` non-empty: the mount must be refused, naming them.
    ``unsupported_ro_compat`` non-empty: only a read-only mount is allowed.
    ``needs_recovery``: the journal must be replayed first (refused for now).
    """

    unsupported_incompat: tuple[str, ...]
    unsupported_ro_compat: tuple[str, ...]
    needs_recovery: bool

    @property
    def mountable(self) -> bool:
        return not self.unsupported_incompat and not self.needs_recovery

    @property
    def writable(self) -> bool:
        return self.mountable and not self.unsupported_ro_compat


def check(sb: _HasFeatures) -> FeatureCheck:
    """Compare a superblock's feature words with the supported sets."""
    incompat = sb.feature_incompat & ~(SUPPORTED_INCOMPAT | INCOMPAT_RECOVER)
    ro = sb.feature_ro_compat & ~SUPPORTED_RO_COMPAT
    return FeatureCheck(
        unsupported_incompat=tuple(incompat_names(incompat)),
        unsupported_ro_compat=tuple(ro_compat_names(ro)),
        needs_recovery=bool(sb.feature_incompat & INCOMPAT_RECOVER),
    )
