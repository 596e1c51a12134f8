"""Extent node codec against debugfs's extent dump, and property tests."""

from __future__ import annotations

import re

import pytest
import test_format_common as common
from chanos.fs.format import extent as E
from chanos.fs.format._record import CorruptError
from chanos.fs.format.extent import Extent, ExtentIndex, ExtentNode
from hypothesis import given
from hypothesis import strategies as st
from test_format_common import Image, debugfs_r

populated = common.populated  # the session fixture


def _debugfs_extents(img, path: str) -> tuple[list[tuple[int, int, int]], list[tuple]]:
    """(leaves, index entries) from `debugfs -R 'ex PATH'`."""
    leaves, index = [], []
    for line in debugfs_r(img, f"ex {path}").splitlines()[1:]:
        m = re.match(
            r"\s*(\d+)/\s*(\d+)\s+(\d+)/\s*(\d+)\s+(\d+)\s+-\s+(\d+)\s+(\d+)(?:\s+-\s+(\d+))?\s+(\d+)",
            line,
        )
        assert m, line
        lvl, depth = int(m.group(1)), int(m.group(2))
        logical, phys, length = int(m.group(5)), int(m.group(7)), int(m.group(9))
        if lvl < depth:
            index.append((logical, phys))
        else:
            leaves.append((logical, phys, length))
    return leaves, index


@pytest.mark.parametrize("path", ["hello", "big", "sparse", "dir", "many"])
def test_extents_match_debugfs(populated: Image, path: str) -> None:
    ino = populated.lookup(path)
    root = ExtentNode.parse(populated.inode(ino).i_block)
    leaves, index = _debugfs_extents(populated.path, path)
    got = populated.extents(ino)
    assert [(e.logical, e.physical, e.length) for e in got] == leaves
    assert not any(e.unwritten for e in got)
    if root.depth:
        assert [(ix.logical, ix.child) for ix in root.entries] == index
    else:
        assert index == []


def test_sparse_file_has_an_index_level(populated: Image) -> None:
    ino = populated.lookup("sparse")
    root = ExtentNode.parse(populated.inode(ino).i_block)
    assert root.depth == 1 and len(root.entries) == 1
    assert root.max == 4
    leaf = ExtentNode.parse(populated.block(root.entries[0].child))
    assert leaf.is_leaf and len(leaf.entries) == 8
    assert leaf.node_size == populated.bs
    assert leaf.max == E.max_entries(populated.bs)
    assert leaf.build() == populated.block(root.entries[0].child)


def test_root_round_trip_all_files(populated: Image) -> None:
    for path in ["hello", "big", "sparse", "dir", "many", "dir/inner", "slow"]:
        i_block = populated.inode(populated.lookup(path)).i_block
        assert ExtentNode.parse(i_block).build() == i_block


def test_max_entries() -> None:
    assert E.max_entries(60) == 4
    assert E.max_entries(1024) == 84
    assert E.max_entries(4096) == 340


def test_unwritten_length_encoding() -> None:
    node = ExtentNode(depth=0)
    node.entries = [
        Extent(0, 32768, 1000),  # longest initialised: raw 32768
        Extent(32768, 1, 50000, unwritten=True),  # raw 32769
        Extent(40000, 32767, 1 << 40, unwritten=True),  # raw 65535, 48-bit start
    ]
    raw = node.build()
    lens = [int.from_bytes(raw[12 + 12 * k + 4 : 12 + 12 * k + 6], "little") for k in range(3)]
    assert lens == [32768, 32769, 65535]
    back = ExtentNode.parse(raw)
    assert back.entries == node.entries
    assert E.decode_len(32768) == (32768, False)
    assert E.decode_len(32769) == (1, True)
    with pytest.raises(ValueError):
        Extent(0, 32768, 1, unwritten=True).encode_len()
    with pytest.raises(ValueError):
        Extent(0, 32769, 1).encode_len()
    with pytest.raises(ValueError):
        Extent(0, 0, 1).encode_len()


def test_index_node_and_empty_root() -> None:
    root = ExtentNode.empty_root()
    raw = root.build()
    assert raw[:12] == bytes.fromhex("0af3 0000 0400 0000 00000000")
    assert len(raw) == 60 and E.is_extent_root(raw)
    idx = ExtentNode(depth=2, entries=[ExtentIndex(0, 77), ExtentIndex(500, (9 << 32) | 5)])
    back = ExtentNode.parse(idx.build())
    assert back.depth == 2 and back.entries == idx.entries and not back.is_leaf
    full = ExtentNode(depth=1, node_size=4096, entries=[ExtentIndex(i, i + 1) for i in range(340)])
    assert full.is_full and ExtentNode.parse(full.build()).entries == full.entries
    full.entries.append(ExtentIndex(1000, 1))
    with pytest.raises(ValueError):
        full.build()


def _raw_node(magic=0xF30A, entries=1, mx=4, depth=0, body=b"") -> bytes:
    hdr = (
        magic.to_bytes(2, "little")
        + entries.to_bytes(2, "little")
        + mx.to_bytes(2, "little")
        + depth.to_bytes(2, "little")
        + bytes(4)
    )
    return (hdr + body).ljust(60, b"\0")


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (_raw_node(magic=0x1234), "magic"),
        (_raw_node(entries=5), "entries"),
        (_raw_node(mx=5), "eh_max"),
        (_raw_node(mx=1), "eh_max"),
        (_raw_node(depth=6, entries=0), "depth"),
        (_raw_node(body=(0).to_bytes(4, "little") + bytes(8)), "zero-length"),
        (
            _raw_node(
                entries=2,
                body=bytes.fromhex("00000000 0400 0000 0a000000 02000000 0100 0000 0b000000"),
            ),
            "order",
        ),
        (
            _raw_node(
                entries=2,
                depth=1,
                body=bytes.fromhex("05000000 0a000000 0000 0000 05000000 0b000000 0000 0000"),
            ),
            "order",
        ),
    ],
)
def test_corrupt_nodes_rejected(raw: bytes, why: str) -> None:
    with pytest.raises(CorruptError, match=why):
        ExtentNode.parse(raw)


@st.composite
def leaf_nodes(draw):
    size = draw(st.sampled_from([60, 1024, 4096]))
    n = draw(st.integers(0, E.max_entries(size) if size == 60 else 20))
    logical = 0
    out = []
    for _ in range(n):
        logical += draw(st.integers(0, 1000))
        unwritten = draw(st.booleans())
        length = draw(st.integers(1, 32767 if unwritten else 32768))
        if logical + length > 1 << 32:
            break
        out.append(Extent(logical, length, draw(st.integers(0, E.MAX_PHYSICAL)), unwritten))
        logical += length
    return ExtentNode(depth=0, entries=out, node_size=size)


@given(leaf_nodes())
def test_leaf_round_trip(node: ExtentNode) -> None:
    raw = node.build()
    assert len(raw) == node.node_size
    back = ExtentNode.parse(raw)
    assert back.entries == node.entries and back.max == E.max_entries(node.node_size)
    assert back.build() == raw


def test_physical_range_checked_against_fs_size() -> None:
    leaf = ExtentNode(depth=0, entries=[Extent(0, 10, 990)]).build()
    assert ExtentNode.parse(leaf, max_block=1000).entries == [Extent(0, 10, 990)]
    with pytest.raises(CorruptError, match="outside"):
        ExtentNode.parse(leaf, max_block=999)
    zero = ExtentNode(depth=0, entries=[Extent(0, 1, 0)]).build()
    ExtentNode.parse(zero)  # no size given: not checked
    with pytest.raises(CorruptError, match="outside"):
        ExtentNode.parse(zero, max_block=1000)
    idx = ExtentNode(depth=1, entries=[ExtentIndex(0, 1000)]).build()
    with pytest.raises(CorruptError, match="outside"):
        ExtentNode.parse(idx, max_block=1000)
    assert ExtentNode.parse(idx, max_block=1001).entries == [ExtentIndex(0, 1000)]


def test_real_trees_within_fs(populated: Image) -> None:
    n = populated.sb.blocks_count
    for path in ["big", "sparse", "many"]:
        root = ExtentNode.parse(populated.inode(populated.lookup(path)).i_block, max_block=n)
        for ix in root.entries if root.depth else []:
            ExtentNode.parse(populated.block(ix.child), max_block=n)
