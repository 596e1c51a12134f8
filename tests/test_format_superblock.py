"""Superblock, group descriptors and feature checks against dumpe2fs."""

from __future__ import annotations

import re

import pytest
import test_format_common as common
from chanos.fs.format import features as F
from chanos.fs.format._record import CorruptError
from chanos.fs.format.group_desc import GroupDesc, build_table, parse_table
from chanos.fs.format.superblock import SUPERBLOCK_OFFSET, Superblock
from hypothesis import given
from hypothesis import strategies as st
from test_format_common import (
    DUMPE2FS,
    Image,
    dumpe2fs_header,
    mkfs,
    run,
)

populated = common.populated  # the session fixture


def test_superblock_matches_dumpe2fs(populated: Image) -> None:
    sb = populated.sb
    h = dumpe2fs_header(populated.path)
    assert sb.inodes_count == int(h["Inode count"])
    assert sb.blocks_count == int(h["Block count"])
    assert sb.r_blocks_count == int(h["Reserved block count"])
    assert sb.free_blocks_count == int(h["Free blocks"])
    assert sb.free_inodes_count == int(h["Free inodes"])
    assert sb.first_data_block == int(h["First block"])
    assert sb.block_size == int(h["Block size"])
    assert sb.blocks_per_group == int(h["Blocks per group"])
    assert sb.inodes_per_group == int(h["Inodes per group"])
    assert sb.inode_size_bytes == int(h["Inode size"])
    assert sb.first_inode == int(h["First inode"])
    assert sb.group_desc_size == int(h["Group descriptor size"])
    assert sb.reserved_gdt_blocks == int(h["Reserved GDT blocks"])
    assert sb.journal_inum == int(h["Journal inode"])
    assert sb.want_extra_isize == int(h["Desired extra isize"])
    assert sb.inode_table_blocks == int(h["Inode blocks per group"])
    assert sb.uuid_str == h["Filesystem UUID"]
    assert sb.feature_names == h["Filesystem features"].split()
    assert sb.is_clean and h["Filesystem state"] == "clean"
    assert sb.hash_seed_words != (0, 0, 0, 0)


def test_superblock_round_trip(populated: Image) -> None:
    raw = populated.data[SUPERBLOCK_OFFSET : SUPERBLOCK_OFFSET + 1024]
    assert Superblock.parse(raw).build() == raw


def test_group_descriptors_match_dumpe2fs(populated: Image) -> None:
    out = run(DUMPE2FS, populated.path)
    groups = re.findall(r"Group (\d+): \(Blocks (\d+)-(\d+)\).*?\n(.*?)(?=\nGroup |\Z)", out, re.S)
    sb = populated.sb
    assert len(groups) == sb.group_count == len(populated.groups)
    for g, first, last, body in groups:
        gd = populated.groups[int(g)]
        assert sb.group_first_block(int(g)) == int(first)
        assert sb.group_blocks(int(g)) == int(last) - int(first) + 1
        assert f"Block bitmap at {gd.block_bitmap} " in body
        assert f"Inode bitmap at {gd.inode_bitmap} " in body
        it_last = gd.inode_table + sb.inode_table_blocks - 1
        assert f"Inode table at {gd.inode_table}-{it_last} " in body
        m = re.search(r"(\d+) free blocks, (\d+) free inodes, (\d+) directories", body)
        assert m is not None
        assert (gd.free_blocks_count, gd.free_inodes_count, gd.used_dirs_count) == tuple(
            map(int, m.groups())
        )
        has_super = "superblock at" in body
        assert sb.group_has_super(int(g)) == has_super
        if has_super:
            sb_at = int(re.search(r"superblock at (\d+)", body).group(1))
            assert sb_at == sb.group_first_block(int(g))
            rsv = re.search(r"Reserved GDT blocks at (\d+)-(\d+)", body)
            assert rsv is not None
            overhead = int(rsv.group(2)) - sb_at + 1
            assert overhead == sb.group_super_overhead(int(g))


def test_group_table_round_trip(populated: Image) -> None:
    sb = populated.sb
    off = sb.gdt_first_block * sb.block_size
    n = sb.group_count * sb.group_desc_size
    raw = populated.data[off : off + n]
    assert build_table(parse_table(raw, sb.group_count, sb.group_desc_size)) == raw


def test_group_desc_combined_fields() -> None:
    g = GroupDesc.new(64)
    g.block_bitmap = (7 << 32) | 9
    g.free_blocks_count = 70000
    assert (g.block_bitmap_lo, g.block_bitmap_hi) == (9, 7)
    assert (g.free_blocks_count_lo, g.free_blocks_count_hi) == (70000 & 0xFFFF, 1)
    assert GroupDesc.parse(g.build(), 64).free_blocks_count == 70000
    small = GroupDesc.new(32)
    small.inode_table = 1234
    assert len(small.build()) == 32
    assert GroupDesc.parse(small.build(), 32).inode_table == 1234
    with pytest.raises(ValueError):
        small.inode_table = 1 << 32
    with pytest.raises(ValueError):
        small.free_inodes_count = 1 << 16


def test_superblock_combined_counters() -> None:
    sb = Superblock.new(feature_incompat=F.INCOMPAT_64BIT)
    sb.blocks_count = (3 << 32) + 5
    assert (sb.blocks_count_lo, sb.blocks_count_hi) == (5, 3)
    sb.free_blocks_count = 1 << 33
    assert Superblock.parse(sb.build()).free_blocks_count == 1 << 33
    narrow = Superblock.new()
    with pytest.raises(ValueError):
        narrow.blocks_count = 1 << 32
    narrow.blocks_count_hi = 99  # ignored without 64bit, as the kernel does
    narrow.blocks_count = 10
    assert narrow.blocks_count == 10


def test_superblock_validation(populated: Image) -> None:
    raw = bytearray(populated.data[SUPERBLOCK_OFFSET : SUPERBLOCK_OFFSET + 1024])
    Superblock.parse_checked(raw)
    bad = bytearray(raw)
    bad[0x38:0x3A] = b"\0\0"
    with pytest.raises(CorruptError, match="magic"):
        Superblock.parse_checked(bad)
    bad = bytearray(raw)
    bad[0x18:0x1C] = (20).to_bytes(4, "little")
    with pytest.raises(CorruptError, match="block size"):
        Superblock.parse_checked(bad)
    bad = bytearray(raw)
    bad[0x28:0x2C] = (0).to_bytes(4, "little")
    with pytest.raises(CorruptError):
        Superblock.parse_checked(bad)
    with pytest.raises(CorruptError):
        Superblock.parse(raw[:100])
    assert CorruptError("x").errno == 5


def test_sparse_super_groups() -> None:
    sb = Superblock.new(feature_ro_compat=F.RO_COMPAT_SPARSE_SUPER)
    expected = {0, 1, 3, 5, 7, 9, 25, 27, 49, 81, 125, 243, 343}
    assert {g for g in range(400) if sb.group_has_super(g)} == expected
    full = Superblock.new()
    assert all(full.group_has_super(g) for g in range(10))


# --- features -----------------------------------------------------------------------------


def test_default_image_features_supported(populated: Image) -> None:
    chk = F.check(populated.sb)
    assert chk.unsupported_incompat == ()
    assert chk.unsupported_ro_compat == ()
    assert chk.mountable and chk.writable and not chk.needs_recovery


@pytest.mark.parametrize(
    ("extra", "incompat", "ro"),
    [
        (("metadata_csum",), (), ("metadata_csum",)),
        (("inline_data",), ("inline_data",), ()),
        (("^64bit", "uninit_bg"), (), ("uninit_bg",)),
        (("meta_bg", "^resize_inode"), ("meta_bg",), ()),
        (("bigalloc",), (), ("bigalloc",)),  # per-group bitmap counts clusters
    ],
)
def test_feature_check_on_real_images(tmp_path, extra, incompat, ro) -> None:
    img = mkfs(tmp_path / "f.img", 4096, "16M", *extra)
    sb = Image.open(img).sb
    chk = F.check(sb)
    assert chk.unsupported_incompat == incompat
    assert chk.unsupported_ro_compat == ro
    assert chk.mountable == (not incompat)
    assert chk.writable == (not incompat and not ro)
    assert sb.feature_names == dumpe2fs_header(img)["Filesystem features"].split()


def test_feature_names_and_unknown_bits() -> None:
    assert F.incompat_names(F.INCOMPAT_EXTENTS | 1 << 31) == ["extent", "FEATURE_I31"]
    assert F.compat_names(1 << 20) == ["FEATURE_C20"]
    assert F.ro_compat_names(F.RO_COMPAT_GDT_CSUM) == ["uninit_bg"]
    assert F.lookup("extents") == F.lookup("extent") == ("incompat", F.INCOMPAT_EXTENTS)
    sb = Superblock.new(feature_incompat=1 << 30 | F.INCOMPAT_RECOVER | F.INCOMPAT_FILETYPE)
    chk = F.check(sb)
    assert chk.unsupported_incompat == ("FEATURE_I30",)
    assert chk.needs_recovery and not chk.mountable
    assert sb.has_feature("filetype") and not sb.has_feature("extent")
    with pytest.raises(KeyError):
        F.lookup("no_such_feature")


@given(st.binary(min_size=1024, max_size=1024))
def test_any_superblock_bytes_round_trip(raw: bytes) -> None:
    assert Superblock.parse(raw).build() == raw


@given(st.binary(min_size=64, max_size=128), st.sampled_from([32, 64, 128]))
def test_any_group_desc_bytes_round_trip(raw: bytes, size: int) -> None:
    raw = raw.ljust(size, b"\0")[:size]
    assert GroupDesc.parse(raw, size).build() == raw


def test_superblock_times_with_hi_bytes() -> None:
    """A time past 2106 needs the s_*_hi byte (offsets 0x274..0x279)."""
    sb = Superblock.new()
    when = (1 << 32) + 86400 * 365
    sb.set_time("wtime", when)
    sb.set_time("mkfs_time", 1_700_000_000)
    raw = sb.build()
    assert int.from_bytes(raw[0x30:0x34], "little") == 86400 * 365
    assert raw[0x274] == 1 and raw[0x276] == 0
    back = Superblock.parse(raw)
    assert back.get_time("wtime") == when
    assert back.get_time("mkfs_time") == 1_700_000_000
    sb.set_time("lastcheck", 1 << 50)
    assert sb.get_time("lastcheck") == (1 << 40) - 1
    with pytest.raises(KeyError):
        sb.get_time("state")
