"""Hostile bytes: every decoder either decodes or raises CorruptError, nothing else.

A corrupt image must cost the damaged object an EIO, never crash an actor with an
unexpected exception type; these tests throw random and mutated bytes at each decoder.
"""

from __future__ import annotations

import struct

from chanos.fs.format import dirent as D
from chanos.fs.format import xattr as X
from chanos.fs.format._record import CorruptError
from chanos.fs.format.extent import ExtentNode
from chanos.fs.format.inode import Inode
from chanos.fs.format.journal import JournalSuperblock
from chanos.fs.format.superblock import Superblock
from hypothesis import given, settings
from hypothesis import strategies as st


def _decodes_or_corrupt(fn, *args) -> object:
    try:
        return fn(*args)
    except CorruptError as e:
        assert e.errno == 5
        return None


def _mutations(base: bytes) -> st.SearchStrategy[bytes]:
    """``base`` with a few bytes overwritten at random places."""

    def apply(edits: list[tuple[int, int]]) -> bytes:
        out = bytearray(base)
        for pos, val in edits:
            out[pos % len(out)] = val
        return bytes(out)

    return st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 255)), max_size=8).map(apply)


_DIR = bytes(D.new_dir_block(1024, 12, 2))
_dir = bytearray(_DIR)
for _i in range(20):
    D.insert(_dir, 100 + _i, b"name-%d" % _i, 1)
_DIR_FULL = bytes(_dir)
_XBLOCK = X.build_block([X.Xattr.make(b"user.k%d" % i, b"v" * i) for i in range(12)], 1024)
_XBODY = X.build_ibody([X.Xattr.make(b"user.a", b"1"), X.Xattr.make(b"trusted.b", b"22")], 96)
_LEAF_HDR = struct.pack("<HHHHI", 0xF30A, 3, 84, 0, 0)


@settings(max_examples=300)
@given(st.one_of(st.binary(min_size=1024, max_size=1024), _mutations(_DIR_FULL)))
def test_directory_block_decoders(raw: bytes) -> None:
    _decodes_or_corrupt(lambda b: list(D.records(b, 1000)), raw)
    _decodes_or_corrupt(D.live_entries, raw)
    _decodes_or_corrupt(D.find, raw, b"name-7")
    _decodes_or_corrupt(D.dotdot_inode, raw)
    _decodes_or_corrupt(D.is_empty_block, raw, True)
    D.parse_dx_root(raw)  # None or a DxRoot, never an exception
    D.parse_dx_node(raw)
    block = bytearray(raw)
    if _decodes_or_corrupt(D.insert, block, 5, b"new", 1) is not None:
        assert D.find(block, b"new") is not None


@settings(max_examples=300)
@given(
    st.one_of(
        st.binary(min_size=1024, max_size=1024),
        _mutations(_XBLOCK),
        _mutations(b"\x00\x00\x02\xea" + bytes(1020)),
    )
)
def test_xattr_block_decoder(raw: bytes) -> None:
    got = _decodes_or_corrupt(X.parse_block, raw)
    if got is not None:
        _hdr, entries = got
        for x in entries:
            assert len(x.value) <= len(raw)


@settings(max_examples=300)
@given(st.one_of(st.binary(min_size=96, max_size=96), _mutations(_XBODY)))
def test_xattr_ibody_decoder(raw: bytes) -> None:
    _decodes_or_corrupt(X.parse_ibody, raw)


@settings(max_examples=300)
@given(
    st.one_of(
        st.binary(min_size=60, max_size=60),
        _mutations(_LEAF_HDR.ljust(60, b"\0")),
        _mutations(_LEAF_HDR.ljust(1024, b"\x01")),
    )
)
def test_extent_node_decoder(raw: bytes) -> None:
    node = _decodes_or_corrupt(ExtentNode.parse, raw)
    if node is not None:
        assert node.build() == raw


@given(st.binary(min_size=1024, max_size=1024))
def test_superblock_and_journal_decoders(raw: bytes) -> None:
    sb = _decodes_or_corrupt(Superblock.parse_checked, raw)
    if sb is not None:
        assert sb.group_count >= 1 and sb.block_size >= 1024
    _decodes_or_corrupt(JournalSuperblock.parse_checked, raw)


@given(st.binary(min_size=0, max_size=600))
def test_inode_decoder_any_length(raw: bytes) -> None:
    inode = _decodes_or_corrupt(Inode.parse, raw)
    if inode is not None:
        assert inode.build() == raw


_SB = Superblock.new(
    magic=0xEF53,
    log_block_size=2,
    blocks_count_lo=16384,
    blocks_per_group=32768,
    clusters_per_group=32768,
    inodes_per_group=16384,
    inodes_count=16384,
    inode_size=256,
    rev_level=1,
    first_ino=11,
    feature_incompat=0x80,
    desc_size=64,
    want_extra_isize=32,
).build()


def test_synthetic_superblock_is_valid() -> None:
    assert Superblock.parse_checked(_SB).group_count == 1


@settings(max_examples=400)
@given(_mutations(_SB))
def test_mutated_superblock(raw: bytes) -> None:
    sb = _decodes_or_corrupt(Superblock.parse_checked, raw)
    if sb is not None:
        # Whatever passed validation gives sane geometry (no division by zero etc.).
        assert sb.group_count >= 1 and sb.gdt_blocks >= 1 and sb.inode_table_blocks >= 1
        for g in range(min(sb.group_count, 3)):
            assert sb.group_blocks(g) >= 1
            sb.group_super_overhead(g)
