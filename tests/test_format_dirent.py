"""Directory block codec: against debugfs listings, htree images, and a model."""

from __future__ import annotations

import errno
import itertools
import re
import stat

import pytest
import test_format_common as common
from chanos.fs.format import dirent as D
from chanos.fs.format._record import CorruptError
from chanos.fs.format.inode import INDEX_FL, file_type_from_mode
from hypothesis import given, settings
from hypothesis import strategies as st
from test_format_common import Image, debugfs_r, fsck

populated = common.populated  # the session fixture


def _debugfs_ls(img, path: str) -> dict[bytes, tuple[int, int]]:
    """name -> (inode, mode) from `debugfs -R 'ls -l PATH'`."""
    out = {}
    for line in debugfs_r(img, f"ls -l {path}").splitlines():
        m = re.match(r"\s*(\d+)\s+(\d+)\s+\((\d+)\)\s+\d+\s+\d+\s+\d+\s+\S+\s+\S+\s+(.*)$", line)
        if m and int(m.group(1)):
            out[m.group(4).encode()] = (int(m.group(1)), int(m.group(2), 8))
    return out


@pytest.mark.parametrize("path", ["/", "dir", "many"])
def test_directory_matches_debugfs_ls(populated: Image, path: str) -> None:
    ino = 2 if path == "/" else populated.lookup(path)
    mine = {r.name: (r.inode, r.file_type) for r in populated.dir_entries(ino)}
    theirs = _debugfs_ls(populated.path, path)
    assert set(mine) == set(theirs)
    for name, (i, mode) in theirs.items():
        assert mine[name] == (i, file_type_from_mode(mode)), name
    if path == "many":
        assert len(populated.file_blocks(ino)) > 1  # a multi-block directory


def test_records_tile_every_block(populated: Image) -> None:
    ino = populated.lookup("many")
    for blk in populated.file_blocks(ino):
        recs = list(D.records(blk, max_inode=populated.sb.inodes_count))
        assert recs[0].offset == 0
        for a, b in itertools.pairwise(recs):
            assert a.offset + a.rec_len == b.offset
        assert recs[-1].offset + recs[-1].rec_len == populated.bs


def test_first_block_dot_dotdot(populated: Image) -> None:
    ino = populated.lookup("dir")
    first = populated.file_blocks(ino)[0]
    assert D.dotdot_inode(first) == 2
    recs = list(D.records(first))
    assert (recs[0].name, recs[0].inode, recs[0].rec_len) == (b".", ino, 12)
    fresh = D.new_dir_block(populated.bs, ino, 2)
    # "." and ".." exactly as debugfs made them (".." rec_len differs: "inner" follows).
    assert fresh[:16] == first[:16] and fresh[18:24] == first[18:24]


# --- htree --------------------------------------------------------------------------------


htree_image = common.htree_image  # module fixture: a two-level htree directory


def test_htree_recognised_and_linear_scan_sees_all(htree_image) -> None:
    image, ino = htree_image
    inode = image.inode(ino)
    assert inode.flags & INDEX_FL
    blocks = image.file_blocks(ino)
    root = D.parse_dx_root(blocks[0])
    assert root is not None
    assert root.indirect_levels == 1 and root.limit == D.dx_root_limit(1024) == 124
    out = debugfs_r(image.path, "htree big")
    m = re.search(r"Number of entries \(count\): (\d+)", out)
    assert m and int(m.group(1)) == len(root.entries)
    assert root.entries[0].hash == 0
    hashes = [e.hash for e in root.entries[1:]]
    assert hashes == sorted(hashes)
    # Interior nodes: linear scan sees nothing in them (one unused record).
    nodes = {e.block for e in root.entries}
    for b in nodes:
        node = D.parse_dx_node(blocks[b])
        assert node is not None and node.limit == D.dx_node_limit(1024)
        assert D.live_entries(blocks[b]) == []
    # dx_root seen linearly: only "." and "..", ".." spanning the block.
    recs = D.live_entries(blocks[0])
    assert [r.name for r in recs] == [b".", b".."] and recs[1].rec_len == 1024 - 12
    names = {r.name for b in blocks for r in D.live_entries(b)}
    assert len(names) == 6000 + 3
    assert names == set(_debugfs_ls(image.path, "big"))
    # Leaf blocks are not mistaken for index nodes and vice versa.
    leaves = [b for i, b in enumerate(blocks) if i and i not in nodes]
    assert all(D.parse_dx_node(b) is None for b in leaves)
    assert D.parse_dx_root(leaves[0]) is None


def test_non_indexed_first_block_is_not_dx_root(populated: Image) -> None:
    first = populated.file_blocks(populated.lookup("many"))[0]
    assert D.parse_dx_root(first) is None


# --- editing, cross-checked by e2fsprogs --------------------------------------------------


def test_edits_read_back_by_debugfs_and_fsck_clean(populated: Image, tmp_path) -> None:
    """Add hard links with insert, remove some with delete; debugfs and e2fsck agree."""
    img = tmp_path / "e.img"
    img.write_bytes(populated.data)
    image = Image.open(img)
    target = image.lookup("hello")
    dir_ino = image.lookup("dir")
    exts = image.extents(dir_ino)
    assert len(exts) == 1 and exts[0].length == 1
    blk_no = exts[0].physical
    block = bytearray(image.block(blk_no))
    added = []
    n = 0
    while True:
        name = f"link-{n:03d}-{'x' * (n % 13)}".encode()
        off = D.insert(block, target, name, D.FT_REG_FILE)
        if off is None:
            break
        added.append((name, off))
        n += 1
    assert len(added) > 10
    assert not D.has_room(block, len(b"link-999-"))
    removed = added[1::3]
    for name, off in removed:
        assert D.delete(block, off).name == name
    kept = [a for a in added if a not in removed]
    for name, off in kept:
        rec = D.find(block, name)
        assert rec is not None and rec.offset == off and rec.inode == target
    # Fix the target's link count so the image stays consistent.
    inode = image.inode(target)
    inode.links_count += len(kept)
    with open(img, "r+b") as f:
        f.seek(blk_no * image.bs)
        f.write(block)
        f.seek(image.inode_offset(target))
        f.write(inode.build())
    listing = _debugfs_ls(img, "dir")
    assert {n for n, _ in kept} <= set(listing)
    assert not {n for n, _ in removed} & set(listing)
    rc, out = fsck(img)
    assert rc == 0, out


# --- model-based property test ------------------------------------------------------------

names = st.binary(min_size=1, max_size=40).filter(lambda b: b"/" not in b and b"\0" not in b)


@settings(max_examples=150, deadline=None)
@given(
    st.sampled_from([1024, 4096]),
    st.booleans(),
    st.lists(st.tuples(st.booleans(), names, st.integers(0, 10**6)), max_size=120),
)
def test_insert_delete_model(bs: int, first: bool, ops) -> None:
    block = D.new_dir_block(bs, 99, 2) if first else D.empty_block(bs)
    model: dict[bytes, tuple[int, int]] = {}  # name -> (offset, inode)
    if first:
        model = {b".": (0, 99), b"..": (12, 2)}
    for is_insert, name, pick in ops:
        if is_insert:
            if name in model:
                continue
            ino = pick + 1
            need = D.rec_len_for(len(name))
            fits = any(
                (r.rec_len - r.used_len if r.inode else r.rec_len) >= need for r in D.records(block)
            )
            off = D.insert(block, ino, name, D.FT_REG_FILE)
            assert (off is not None) == fits
            if off is not None:
                assert off % 4 == 0
                model[name] = (off, ino)
        elif model:
            victims = [n for n in sorted(model) if not (first and n in (b".", b".."))]
            if not victims:
                continue
            victim = victims[pick % len(victims)]
            off, ino = model.pop(victim)
            gone = D.delete(block, off)
            assert (gone.name, gone.inode) == (victim, ino)
        # Invariants: valid chain covering the block; live entries == model, never moved.
        recs = list(D.records(block))
        assert sum(r.rec_len for r in recs) == bs
        live = {r.name: (r.offset, r.inode) for r in recs if r.inode}
        assert live == model
        if first:
            assert D.dotdot_inode(block) == 2
    assert D.is_empty_block(block, first) == (len(model) == (2 if first else 0))


def test_delete_first_record_zeroes_inode() -> None:
    block = D.empty_block(1024)
    a = D.insert(block, 5, b"a", D.FT_DIR)
    b = D.insert(block, 6, b"b", D.FT_REG_FILE)
    assert (a, b) == (0, 12)
    D.delete(block, 0)
    recs = list(D.records(block))
    assert (recs[0].inode, recs[0].rec_len, recs[0].name) == (0, 12, b"")
    assert D.insert(block, 7, b"abcd", D.FT_REG_FILE) == 0  # reuses the unused record
    assert D.insert(block, 8, b"abcde", D.FT_REG_FILE) == 12 + 12  # splits b's slack
    with pytest.raises(CorruptError):
        D.delete(block, 4)  # not a record boundary
    D.delete(block, 12)
    with pytest.raises(CorruptError):
        D.delete(block, 12)  # already merged away


def test_set_entry_and_dotdot() -> None:
    block = D.new_dir_block(4096, 12, 2)
    off = D.insert(block, 20, b"x", D.FT_REG_FILE)
    D.set_entry(block, off, 21, D.FT_DIR)
    assert D.find(block, b"x") == D.DirRecord(off, 21, 4096 - off, b"x", D.FT_DIR)
    D.set_dotdot(block, 77)
    assert D.dotdot_inode(block) == 77
    assert D.find(block, b"y") is None


def test_names_and_lengths() -> None:
    assert [D.rec_len_for(n) for n in (1, 4, 5, 8, 255)] == [12, 12, 16, 16, 264]
    with pytest.raises(OSError) as e:
        D.check_name(b"a" * 256)
    assert e.value.errno == errno.ENAMETOOLONG
    for bad in (b"", b"a/b", b"a\0"):
        with pytest.raises(OSError) as e:
            D.check_name(bad)
        assert e.value.errno == errno.EINVAL
    block = D.empty_block(1024)
    assert D.insert(block, 3, b"n" * 255, D.FT_REG_FILE) == 0
    assert D.find(block, b"n" * 255).rec_len == 1024
    # 64 KiB blocks store a whole-block rec_len as 65535.
    assert D.rec_len_to_disk(65536, 65536) == 65535
    assert D.rec_len_from_disk(65535, 65536) == 65536
    assert D.rec_len_from_disk(D.rec_len_to_disk(65532, 65536), 65536) == 65532
    assert D.file_type_from_mode(stat.S_IFLNK) == D.FT_SYMLINK


@pytest.mark.parametrize(
    ("patch", "why"),
    [
        ((4, b"\x08\x00"), "rec_len"),  # below 12
        ((4, b"\x0e\x00"), "rec_len"),  # not a multiple of 4
        ((4, b"\x0c\x00", 6, b"\x09"), "too small"),  # name does not fit
        ((4, b"\x00\x08"), "overruns"),  # past the block end
    ],
)
def test_corrupt_records_rejected(patch, why) -> None:
    block = D.empty_block(1024)
    it = iter(patch)
    for off, data in zip(it, it, strict=True):
        block[off : off + len(data)] = data
    with pytest.raises(CorruptError, match=why):
        list(D.records(block))
    good = D.new_dir_block(1024, 12, 2)
    with pytest.raises(CorruptError, match="out of range"):
        list(D.records(good, max_inode=10))


def test_insert_never_splits_a_live_record_below_the_minimum_rec_len():
    # A live record with name_len 0 (corrupt, yet readable) in a 20-byte slot: keeping
    # only its 8 header bytes would leave a record every reader rejects.
    block = bytearray(1024)
    block[0:8] = (1).to_bytes(4, "little") + (20).to_bytes(2, "little") + b"\0\0"
    block[24:26] = (1004).to_bytes(2, "little")  # then a free record of the rest
    off = D.insert(block, 5, b"new", 1)
    assert off == 20  # the free record, not the 12 bytes after the first one's header
    assert D.find(block, b"new") is not None
    assert [r.rec_len for r in D.records(block)] == [20, 1004]
