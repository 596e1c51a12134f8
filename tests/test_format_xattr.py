"""Xattr codec: against debugfs ea_list/ea_get, e2fsck's hash checks, and limits."""

from __future__ import annotations

import errno
import re
import struct

import pytest
import test_format_common as common
from chanos.fs.format import xattr as X
from chanos.fs.format._record import CorruptError
from chanos.fs.format.xattr import Xattr
from hypothesis import given
from hypothesis import strategies as st
from test_format_common import Image, debugfs_r, debugfs_w, fsck, mkfs

populated = common.populated  # the session fixture


def _ea_list(img, path: str) -> list[tuple[bytes, int]]:
    """(full name, value size) in debugfs's order (in-inode first, then the block)."""
    out = []
    for line in debugfs_r(img, f"ea_list {path}").splitlines()[1:]:
        # Names with non-printable bytes are printed as hex: "75 73 65 72 2e c3 a9  (2)".
        m = re.match(r"\s+((?:[0-9a-f]{2} )+) \((\d+)\)", line)
        if m:
            out.append((bytes.fromhex(m.group(1)), int(m.group(2))))
            continue
        m = re.match(r"\s+(\S+) \((\d+)\)", line)
        assert m, line
        out.append((m.group(1).encode(), int(m.group(2))))
    return out


def _ea_get(img, path: str, name: bytes, tmp_path) -> bytes:
    dest = tmp_path / "ea.out"
    debugfs_r(img, f"ea_get -f {dest} {path} {name.decode()}")
    return dest.read_bytes()


def _all(image: Image, ino: int) -> tuple[list[Xattr], list[Xattr], bytes]:
    inode = image.inode(ino)
    ibody = X.parse_ibody(inode.tail)
    block = b""
    in_block: list[Xattr] = []
    if inode.file_acl:
        block = image.block(inode.file_acl)
        _hdr, in_block = X.parse_block(block)
    return ibody, in_block, block


@pytest.mark.parametrize("path", ["hello", "dir"])
def test_xattrs_match_debugfs(populated: Image, path: str, tmp_path) -> None:
    ino = populated.lookup(path)
    ibody, in_block, _ = _all(populated, ino)
    mine = [(x.full_name, len(x.value)) for x in ibody + in_block]
    assert mine == _ea_list(populated.path, path)
    for x in ibody + in_block:
        if x.value:
            assert _ea_get(populated.path, path, x.full_name, tmp_path) == x.value


def test_hello_placement_and_hashes(populated: Image) -> None:
    ibody, in_block, block = _all(populated, populated.lookup("hello"))
    assert {x.full_name for x in ibody} == {b"user.color", b"trusted.t", b"user.empty"}
    assert [x.full_name for x in in_block] == [b"user.big"]  # 300 bytes: not in the inode
    assert all(x.hash == 0 for x in ibody)  # e2fsprogs leaves in-inode hashes 0
    for x in in_block:
        assert x.hash == X.entry_hash(x.name, x.value) != 0
    hdr, _ = X.parse_block(block)
    assert (hdr.magic, hdr.refcount, hdr.blocks) == (X.MAGIC, 1, 1)
    assert b"user.empty" in [x.full_name for x in ibody]
    assert next(x for x in ibody if x.name == b"empty").value == b""


def test_round_trip_byte_identical(populated: Image) -> None:
    for path in ("hello", "dir"):
        inode = populated.inode(populated.lookup(path))
        ibody, in_block, block = _all(populated, populated.lookup(path))
        assert X.build_ibody(ibody, len(inode.tail), with_hash=False) == inode.tail
        if block:
            hdr, _ = X.parse_block(block)
            rebuilt = X.build_block(in_block, populated.bs, header=hdr, with_block_hash=False)
            assert rebuilt == block


def test_kernel_style_rewrite_is_fsck_clean(populated: Image, tmp_path) -> None:
    """Rewrite hello's xattrs (hashes everywhere, new entries) and let e2fsprogs judge."""
    img = tmp_path / "x.img"
    img.write_bytes(populated.data)
    image = Image.open(img)
    ino = image.lookup("hello")
    inode = image.inode(ino)
    ibody, in_block, _ = _all(image, ino)
    wanted = [
        *ibody,
        *in_block,
        Xattr.make(b"user.second", b"v" * 40),
        Xattr.make("user.é-name".encode(), b"\xff\x00\x01"),
        Xattr.make(b"trusted.big2", bytes(range(256)) * 2),
        Xattr.make(b"security.label", b"s0"),
    ]
    in_inode, to_block = X.place(wanted, len(inode.tail), image.bs)
    assert to_block  # the 512-byte value cannot stay in a 256-byte inode
    assert sum(x.space for x in in_inode) <= X.ibody_capacity(len(inode.tail))
    inode.tail = X.build_ibody(in_inode, len(inode.tail))
    block = X.build_block(to_block, image.bs)
    with open(img, "r+b") as f:
        f.seek(image.inode_offset(ino))
        f.write(inode.build())
        f.seek(inode.file_acl * image.bs)
        f.write(block)
    rc, out = fsck(img)
    assert rc == 0, out
    listed = dict(_ea_list(img, "hello"))
    assert listed == {x.full_name: len(x.value) for x in wanted}
    for x in wanted:
        if x.value:
            assert _ea_get(img, "hello", x.full_name, tmp_path) == x.value
    # The block is sorted by (index, name length, name) and carries the block hash.
    _hdr, parsed = X.parse_block(block)
    assert parsed == sorted(parsed, key=X.block_sort_key)
    assert _hdr.hash == X.block_hash(x.hash for x in parsed) != 0


def test_wrong_hash_is_caught_by_e2fsck(populated: Image, tmp_path) -> None:
    """The test above is meaningful: e2fsck does check the hashes we compute."""
    img = tmp_path / "bad.img"
    img.write_bytes(populated.data)
    image = Image.open(img)
    inode = image.inode(image.lookup("hello"))
    block = bytearray(image.block(inode.file_acl))
    struct.pack_into("<I", block, X.HEADER_SIZE + 12, 0x12345678)  # first entry's e_hash
    with open(img, "r+b") as f:
        f.seek(inode.file_acl * image.bs)
        f.write(block)
    rc, out = fsck(img)
    assert rc != 0 and "hash" in out.lower(), out


def test_entry_hash_known_values() -> None:
    # Name-only hash: h = rotl5(h) ^ c, folded by hand for "ab".
    assert X.entry_hash(b"a", b"") == 0x61
    assert X.entry_hash(b"ab", b"") == (0x61 << 5) ^ 0x62
    # Value words are little-endian, zero-padded.
    h = (0x61 << 16) ^ 0x00636261
    assert X.entry_hash(b"a", b"abc") == h
    # Signed-char variant differs only for bytes >= 0x80.
    assert X.entry_hash(b"\xe9", b"") == 0xE9
    assert X.entry_hash(b"\xe9", b"", signed=True) == 0xFFFFFFE9
    assert X.block_hash([1, 2]) == (1 << 16) ^ 2
    assert X.block_hash([1, 0, 2]) == 0


def test_names() -> None:
    assert X.split_name(b"user.foo") == (X.INDEX_USER, b"foo")
    assert X.split_name(b"trusted.x") == (X.INDEX_TRUSTED, b"x")
    assert X.split_name(b"security.selinux") == (X.INDEX_SECURITY, b"selinux")
    assert X.split_name(b"system.posix_acl_access") == (X.INDEX_POSIX_ACL_ACCESS, b"")
    assert X.split_name(b"system.posix_acl_default") == (X.INDEX_POSIX_ACL_DEFAULT, b"")
    assert X.split_name(b"system.data") == (X.INDEX_SYSTEM, b"data")
    for index, suffix in [(1, b"a"), (2, b""), (3, b""), (4, b"t"), (6, b"s"), (7, b"data")]:
        assert X.split_name(X.full_name(index, suffix)) == (index, suffix)
    with pytest.raises(OSError) as e:
        X.split_name(b"os2.foo")
    assert e.value.errno == errno.EOPNOTSUPP
    with pytest.raises(OSError) as e:
        X.split_name(b"user.")
    assert e.value.errno == errno.EINVAL
    with pytest.raises(OSError) as e:
        X.split_name(b"user." + b"n" * 251)
    assert e.value.errno == errno.ERANGE
    assert X.split_name(b"user." + b"n" * 250)[1] == b"n" * 250


def test_limits() -> None:
    with pytest.raises(OSError) as e:
        Xattr.make(b"user.v", bytes(X.SIZE_MAX + 1))
    assert e.value.errno == errno.E2BIG
    Xattr.make(b"user.v", bytes(X.SIZE_MAX))
    big = Xattr.make(b"user.big", bytes(4096))
    with pytest.raises(OSError) as e:
        X.build_block([big], 4096)
    assert e.value.errno == errno.ENOSPC
    with pytest.raises(OSError) as e:
        X.place([big], 256 - 160, 4096)
    assert e.value.errno == errno.ENOSPC
    # Exactly full: capacity = block - header - terminator.
    fit = Xattr.make(b"user.f", bytes(X.block_capacity(1024) - X.entry_len(1)))
    assert len(X.build_block([fit], 1024)) == 1024
    with pytest.raises(OSError) as e:
        X.build_ibody([Xattr.make(b"user.a", bytes(96))], 96)
    assert e.value.errno == errno.ENOSPC
    assert X.build_ibody([], 96) == bytes(96)
    assert X.parse_ibody(bytes(96)) == []
    with pytest.raises(ValueError):
        X.build_block([Xattr.make(b"user.a", b"1"), Xattr.make(b"user.a", b"2")], 1024)


def test_place_prefers_inode() -> None:
    small = [Xattr.make(f"user.s{i}".encode(), b"x" * 8) for i in range(3)]
    ibody, block = X.place(small, 96, 4096)
    assert ibody == small and block == []
    big = Xattr.make(b"user.big", b"y" * 80)
    ibody, block = X.place([*small, big], 96, 4096)
    assert ibody == small and block == [big]


def test_corrupt_blocks_rejected() -> None:
    good = bytearray(X.build_block([Xattr.make(b"user.a", b"hello")], 1024))
    X.parse_block(bytes(good))
    bad = bytearray(good)
    bad[0] ^= 1
    with pytest.raises(CorruptError, match="magic"):
        X.parse_block(bytes(bad))
    bad = bytearray(good)
    struct.pack_into("<H", bad, X.HEADER_SIZE + 2, 1020)  # value past the end
    with pytest.raises(CorruptError, match="bounds"):
        X.parse_block(bytes(bad))
    bad = bytearray(good)
    struct.pack_into("<H", bad, X.HEADER_SIZE + 2, X.HEADER_SIZE)  # value over the table
    with pytest.raises(CorruptError, match="overlap"):
        X.parse_block(bytes(bad))
    bad = bytearray(good)
    struct.pack_into("<I", bad, 8, 2)  # h_blocks
    with pytest.raises(CorruptError):
        X.parse_block(bytes(bad))


xattr_lists = st.lists(
    st.builds(
        Xattr,
        st.sampled_from([1, 4, 6]),
        st.binary(min_size=1, max_size=30),
        st.binary(max_size=200),
    ),
    max_size=12,
    unique_by=lambda x: (x.index, x.name),
)


@given(xattr_lists)
def test_block_round_trip(xs: list[Xattr]) -> None:
    try:
        raw = X.build_block(xs, 4096)
    except OSError as e:
        assert e.errno == errno.ENOSPC
        assert X.used_space(xs) > X.block_capacity(4096)
        return
    _hdr, back = X.parse_block(raw)
    assert sorted((x.index, x.name, x.value) for x in back) == sorted(
        (x.index, x.name, x.value) for x in xs
    )
    assert all(x.hash == x.computed_hash() for x in back)
    assert X.build_block(back, 4096) == raw


@given(xattr_lists)
def test_ibody_round_trip(xs: list[Xattr]) -> None:
    size = 512 - 160
    try:
        raw = X.build_ibody(xs, size)
    except OSError as e:
        assert e.errno == errno.ENOSPC
        return
    back = X.parse_ibody(raw)
    assert [(x.index, x.name, x.value) for x in back] == [(x.index, x.name, x.value) for x in xs]
    assert X.build_ibody(back, size) == raw


# --- POSIX ACLs -----------------------------------------------------------------------------


def _posix_acl(entries: list[tuple[int, int, int]]) -> bytes:
    return struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *e) for e in entries)


def test_acl_conversion_matches_e2fsprogs(tmp_path) -> None:
    acl = _posix_acl(
        [
            (X.ACL_USER_OBJ, 6, 0xFFFFFFFF),
            (X.ACL_USER, 4, 1000),
            (X.ACL_GROUP_OBJ, 4, 0xFFFFFFFF),
            (X.ACL_GROUP, 5, 2000),
            (X.ACL_MASK, 7, 0xFFFFFFFF),
            (X.ACL_OTHER, 0, 0xFFFFFFFF),
        ]
    )
    img = mkfs(tmp_path / "a.img", 4096, "16M")
    (tmp_path / "acl").write_bytes(acl)
    (tmp_path / "f").write_bytes(b"f")
    debugfs_w(
        img,
        [f"write {tmp_path / 'f'} f", f"ea_set -f {tmp_path / 'acl'} f system.posix_acl_access"],
        tmp_path,
    )
    image = Image.open(img)
    (x,) = X.parse_ibody(image.inode(image.lookup("f")).tail)
    assert (x.index, x.name) == (X.INDEX_POSIX_ACL_ACCESS, b"")
    assert X.acl_to_disk(acl) == x.value  # e2fsprogs' compact on-disk form
    assert len(x.value) == 4 + 4 * 4 + 2 * 8
    assert X.acl_from_disk(x.value) == acl
    with pytest.raises(OSError) as e:
        X.acl_to_disk(b"\x02\0\0\0" + b"\x40\0\0\0\0\0\0\0")  # bad tag
    assert e.value.errno == errno.EINVAL
    with pytest.raises(CorruptError):
        X.acl_from_disk(b"\x01\0\0\0\x02\0\x04\0")  # truncated ACL_USER entry


def test_ea_inode_reference_needs_the_feature() -> None:
    x = Xattr(X.INDEX_USER, b"huge", b"", value_inum=77)
    raw = X.build_block([x], 1024)
    with pytest.raises(CorruptError, match="EA inode"):
        X.parse_block(raw)
    _hdr, (back,) = X.parse_block(raw, ea_inode=True)
    assert (back.name, back.value_inum, back.value) == (b"huge", 77, b"")
