"""Inode codec against debugfs stat, plus property tests of the field encodings."""

from __future__ import annotations

import errno
import stat
import struct

import pytest
from chanos.fs.format import inode as I
from chanos.fs.format._record import CorruptError
from chanos.fs.format.inode import Inode
from hypothesis import given
from hypothesis import strategies as st
from test_format_common import (
    FAST_TARGET,
    NS_MTIME_EXTRA,
    SLOW_TARGET,
    Image,
    debugfs_stat,
    debugfs_w,
    fsck,
    mkfs,
)

FILES = ["hello", "big", "sparse", "dir", "dir/inner", "fast", "slow", "cdev", "fifo", "many"]

import test_format_common as common  # noqa: E402

populated = common.populated  # the session fixture


def _hex_time(i: Inode, name: str) -> str:
    s = f"{getattr(i, name):#010x}"
    if i.has_extra(name + "_extra"):
        s += f":{getattr(i, name + '_extra'):08x}"
    return s


@pytest.mark.parametrize("path", FILES)
def test_inode_fields_match_debugfs(populated: Image, path: str) -> None:
    ino = populated.lookup(path)
    i = populated.inode(ino)
    d = debugfs_stat(populated.path, f"<{ino}>")
    assert int(d["mode"], 8) == stat.S_IMODE(i.mode)
    assert int(d["flags"], 16) == i.flags
    assert int(d["generation"]) == i.generation
    assert int(d["user"]) == i.uid
    assert int(d["group"]) == i.gid
    assert int(d["size"]) == i.size
    assert int(d["links"]) == i.links_count
    assert int(d["file_acl"]) == i.file_acl
    assert int(d["blockcount"]) == i.get_blocks(populated.sb.huge_file, populated.bs)
    assert int(d["extra_isize"]) == i.extra_isize == 32
    for t in ("ctime", "atime", "mtime", "crtime"):
        assert d[t] == _hex_time(i, t)


def test_special_values(populated: Image) -> None:
    hello = populated.inode(populated.lookup("hello"))
    assert (hello.uid, hello.gid, hello.generation) == (100000, 70001, 12345)
    assert (hello.uid_high, hello.gid_high) == (1, 1)
    # mtime_extra: epoch bit 1 adds 2**32 seconds; 123456789 ns.
    sec = hello.mtime - (1 << 32 if hello.mtime & 1 << 31 else 0) + (1 << 32)
    assert hello.mtime_ns == sec * 10**9 + 123456789
    assert hello.mtime_extra == NS_MTIME_EXTRA
    assert hello.atime_ns % 10**9 == 1
    assert hello.is_reg and hello.uses_extents and not hello.is_fast_symlink
    assert hello.file_type == I.FT_REG_FILE

    fast = populated.inode(populated.lookup("fast"))
    assert fast.is_fast_symlink and not fast.uses_extents
    assert fast.fast_symlink_target == FAST_TARGET.encode()
    assert debugfs_stat(populated.path, "fast")["fast_link"] == FAST_TARGET

    slow = populated.inode(populated.lookup("slow"))
    assert slow.is_symlink and not slow.is_fast_symlink
    assert slow.size == len(SLOW_TARGET)
    blocks = populated.file_blocks(populated.lookup("slow"))
    assert blocks[0][: slow.size] == SLOW_TARGET.encode()

    cdev = populated.inode(populated.lookup("cdev"))
    assert stat.S_ISCHR(cdev.mode) and cdev.is_special and cdev.rdev == (4, 5)
    assert cdev.file_type == I.FT_CHRDEV
    fifo = populated.inode(populated.lookup("fifo"))
    assert stat.S_ISFIFO(fifo.mode) and fifo.file_type == I.FT_FIFO

    d = populated.inode(populated.lookup("dir"))
    assert d.is_dir and d.file_type == I.FT_DIR and d.links_count == 2


def test_every_used_inode_round_trips(populated: Image) -> None:
    sb = populated.sb
    n = 0
    for ino in range(1, sb.inodes_count + 1):
        raw = populated.inode_raw(ino)
        if not any(raw):
            continue
        assert Inode.parse(raw).build() == raw, ino
        n += 1
    assert n >= 4 + 131  # root, resize, journal, lost+found, and the populated tree


def test_new_style_device_numbers(tmp_path) -> None:
    """A device number too big for the old encoding, decoded as debugfs decodes it."""
    img = mkfs(tmp_path / "d.img", 4096, "16M")
    new = I.encode_device(300, 70000)
    w = struct.unpack("<15I", new)
    assert w[0] == 0 and w[1] != 0
    debugfs_w(
        img,
        [
            "mknod bdev b 8 1",
            "set_inode_field bdev block[0] 0",
            f"set_inode_field bdev block[1] {w[1]}",
        ],
        tmp_path,
    )
    image = Image.open(img)
    ino = image.lookup("bdev")
    i = image.inode(ino)
    assert i.rdev == (300, 70000)
    assert debugfs_stat(img, "bdev")["device"] == "300:70000"
    assert i.i_block == new
    old = I.encode_device(8, 1)
    assert struct.unpack_from("<I", old)[0] == 0x0801


def test_written_inode_reads_back_in_debugfs(populated: Image, tmp_path) -> None:
    """Fields set through the codec are what debugfs sees; e2fsck stays clean."""
    img = tmp_path / "w.img"
    img.write_bytes(populated.data)
    ino = populated.lookup("dir/inner")
    i = populated.inode(ino)
    i.uid = 3_000_000
    i.gid = 65536 + 7
    i.mtime_ns = 5_000_000_000 * 10**9 // 10**9 * 10**9 + 999_999_999  # year 2128
    i.atime_ns = -1_500_000_000 * 10**9 + 5  # before 1970
    i.ctime_ns = 1_700_000_000 * 10**9 + 42
    i.crtime_ns = 1_600_000_000 * 10**9
    i.generation = 0xDEADBEEF
    i.mode = stat.S_IFREG | 0o640
    off = populated.inode_offset(ino)
    with open(img, "r+b") as f:
        f.seek(off)
        f.write(i.build())
    d = debugfs_stat(img, f"<{ino}>")
    assert (int(d["user"]), int(d["group"])) == (3_000_000, 65536 + 7)
    assert int(d["generation"]) == 0xDEADBEEF
    assert int(d["mode"], 8) == 0o640
    lo, extra = I.encode_time(i.mtime_ns)
    assert d["mtime"] == f"{lo:#010x}:{extra:08x}"
    assert extra & 3 == 1 and extra >> 2 == 999_999_999
    back = Image.open(img).inode(ino)
    assert back.mtime_ns == i.mtime_ns and back.atime_ns == i.atime_ns
    assert back.ctime_ns == i.ctime_ns and back.crtime_ns == i.crtime_ns
    rc, out = fsck(img)
    assert rc == 0, out


# --- encodings ------------------------------------------------------------------------------


@given(st.integers(I.TIME_MIN * 10**9, I.TIME_MAX * 10**9 + 999_999_999))
def test_time_round_trip(ns: int) -> None:
    lo, extra = I.encode_time(ns)
    assert 0 <= lo < 1 << 32 and 0 <= extra < 1 << 32
    assert I.decode_time(lo, extra) == ns


@given(st.integers(-(2**40) * 10**9, 2**40 * 10**9))
def test_time_clamps(ns: int) -> None:
    lo, extra = I.encode_time(ns)
    back = I.decode_time(lo, extra)
    assert I.TIME_MIN * 10**9 <= back <= I.TIME_MAX * 10**9 + 999_999_999
    if I.TIME_MIN * 10**9 <= ns <= I.TIME_MAX * 10**9:
        assert back == ns
    lo, _ = I.encode_time(ns, with_extra=False)
    assert I.decode_time(lo, None) // 10**9 == max(
        I.TIME_MIN, min(I.TIME_MAX_NO_EXTRA, ns // 10**9)
    )


def test_time_known_values() -> None:
    # The kernel's encoding: 2038-01-19T03:14:08 is 0x80000000 with epoch bit 1.
    assert I.encode_time(2**31 * 10**9) == (0x80000000, 1)
    assert I.encode_time(-1 * 10**9) == (0xFFFFFFFF, 0)
    assert I.decode_time(0xFFFFFFFF, None) == -(10**9)
    assert I.encode_time(2**32 * 10**9 + 7) == (0, 1 | 7 << 2)


@given(st.integers(0, 0xFFF), st.integers(0, 0xFFFFF))
def test_device_round_trip(major: int, minor: int) -> None:
    raw = I.encode_device(major, minor)
    assert len(raw) == 60
    assert I.decode_device(raw) == (major, minor)


@given(
    st.sampled_from([1024, 4096]).flatmap(
        lambda bs: st.tuples(st.integers(0, (1 << 48) * (bs // 512) - 1), st.just(bs))
    )
)
def test_i_blocks_round_trip(args: tuple[int, int]) -> None:
    count, bs = args
    i = Inode.new()
    i.set_blocks(count, huge_file=True, block_size=bs)
    back = Inode.parse(i.build())
    if count <= 0xFFFFFFFFFFFF:
        assert back.get_blocks(True, bs) == count
        assert not back.flags & I.HUGE_FILE_FL
    else:
        assert back.flags & I.HUGE_FILE_FL
        assert back.get_blocks(True, bs) == count - count % (bs // 512)


def test_i_blocks_without_huge_file() -> None:
    i = Inode.new()
    i.set_blocks(0xFFFFFFFF, huge_file=False, block_size=4096)
    assert i.get_blocks(False, 4096) == 0xFFFFFFFF
    with pytest.raises(OSError) as e:
        i.set_blocks(1 << 32, huge_file=False, block_size=4096)
    assert e.value.errno == errno.EFBIG
    i.blocks_high = 5  # ignored without huge_file
    assert i.get_blocks(False, 4096) == 0xFFFFFFFF
    with pytest.raises(OSError) as e:
        i.set_blocks((1 << 48) * 8, huge_file=True, block_size=4096)
    assert e.value.errno == errno.EFBIG


def test_size_and_acl_combined() -> None:
    i = Inode.new()
    i.size = 5 * 2**32 + 17
    i.file_acl = (3 << 32) | 99
    back = Inode.parse(i.build())
    assert (back.size_lo, back.size_high, back.size) == (17, 5, 5 * 2**32 + 17)
    assert (back.file_acl_lo, back.file_acl_high) == (99, 3)
    with pytest.raises(ValueError):
        i.file_acl = 1 << 48


def test_inode_layouts() -> None:
    small = Inode.new(128)
    assert len(small.build()) == 128 and small.xattr_area_offset == 0
    small.mtime_ns = 10**9 + 5  # no extra field: nanoseconds dropped
    assert small.mtime_ns == 10**9 and small.crtime_ns == 0
    big = Inode.new(512, extra_isize=32)
    assert len(big.tail) == 512 - 160 and big.xattr_area_offset == 160
    part = bytearray(256)
    part[128:130] = (16).to_bytes(2, "little")  # up to atime_extra: no crtime
    p = Inode.parse(bytes(part))
    assert p.has_extra("atime_extra") and not p.has_extra("crtime")
    p.crtime_ns = 123 * 10**9  # ignored: no room
    assert p.build() == bytes(part)
    wide = bytearray(512)
    wide[128:130] = (48).to_bytes(2, "little")
    wide[170] = 0xAB  # an extra field past the known 32 bytes survives
    assert Inode.parse(bytes(wide)).build() == bytes(wide)
    zero = Inode.parse(bytes(256))
    assert zero.extra_isize == 0 and zero.build() == bytes(256)
    for bad_isize in (3, 200):
        raw = bytearray(256)
        raw[128:130] = bad_isize.to_bytes(2, "little")
        with pytest.raises(CorruptError):
            Inode.parse(bytes(raw))


def test_fast_symlink_rule() -> None:
    i = Inode.new(mode=stat.S_IFLNK | 0o777)
    i.flags = I.EXTENTS_FL
    i.set_fast_symlink(b"x" * 59)
    assert i.is_fast_symlink and not i.uses_extents
    assert i.fast_symlink_target == b"x" * 59
    i.size = 60
    assert not i.is_fast_symlink
    i.size = 0
    assert not i.is_fast_symlink
    with pytest.raises(OSError):
        i.set_fast_symlink(b"y" * 60)


def test_file_type_mapping() -> None:
    for fmt, ft in [
        (stat.S_IFREG, I.FT_REG_FILE),
        (stat.S_IFDIR, I.FT_DIR),
        (stat.S_IFCHR, I.FT_CHRDEV),
        (stat.S_IFBLK, I.FT_BLKDEV),
        (stat.S_IFIFO, I.FT_FIFO),
        (stat.S_IFSOCK, I.FT_SOCK),
        (stat.S_IFLNK, I.FT_SYMLINK),
    ]:
        assert I.file_type_from_mode(fmt | 0o644) == ft
        assert I.mode_format_from_file_type(ft) == fmt
    assert I.file_type_from_mode(0o644) == I.FT_UNKNOWN


@given(st.binary(min_size=256, max_size=256), st.sampled_from([0, 4, 16, 28, 32, 64]))
def test_any_inode_bytes_round_trip(raw: bytes, extra_isize: int) -> None:
    """Whatever the bytes, parse -> build is the identity (nothing is lost)."""
    raw = raw[:128] + extra_isize.to_bytes(2, "little") + raw[130:]
    assert Inode.parse(raw).build() == raw
    assert Inode.parse(raw[:128]).build() == raw[:128]


@given(
    st.integers(-(2**36) * 10**9, 2**36 * 10**9),
    st.sampled_from(
        [
            (128, 0),
            (256, 0),
            (256, 4),
            (256, 8),
            (256, 12),
            (256, 16),
            (256, 20),
            (256, 24),
            (256, 32),
            (512, 32),
        ]
    ),
    st.booleans(),
    st.booleans(),
)
def test_set_times_stores_what_the_setters_store(
    ns: int, layout: tuple[int, int], atime: bool, crtime: bool
) -> None:
    size, extra = layout
    one = Inode.new(inode_size=size, extra_isize=extra, mode=0o100644, links_count=1)
    one.atime_ns = one.crtime_ns = 123_456_789_000_000_007  # left alone unless asked
    other = one.copy()
    one.set_times(ns, atime=atime, crtime=crtime)
    other.mtime_ns = other.ctime_ns = ns
    if atime:
        other.atime_ns = ns
    if crtime:
        other.crtime_ns = ns
    assert one.build() == other.build()


# --- reading without decoding -------------------------------------------------------------


def test_stat_times_match_the_properties() -> None:
    from chanos.fs.format.inode import Inode

    for size, extra in ((128, 0), (256, 0), (256, 16), (256, 20), (256, 32)):
        ino = Inode.new(inode_size=size, extra_isize=extra, mode=0o100644, links_count=1)
        ino.atime_ns = 1_700_000_000_123_456_789
        ino.mtime_ns = -5_000_000_001
        ino.ctime_ns = (1 << 33) * 1_000_000_000 + 7
        if ino.has_extra("crtime"):
            ino.crtime_ns = 1_600_000_000_000_000_001
        again = Inode.parse(ino.build())
        assert again.stat_times() == (
            again.atime_ns,
            again.mtime_ns,
            again.ctime_ns,
            again.crtime_ns,
        )


def test_in_use_without_xattrs() -> None:
    from chanos.fs.format.inode import Inode, in_use_without_xattrs

    plain = Inode.new(mode=0o100644, links_count=1)
    assert in_use_without_xattrs(plain.build())
    assert in_use_without_xattrs(Inode.new(128, 0, mode=0o100644, links_count=1).build())
    # Free, unlinked: the vnode decides.
    assert not in_use_without_xattrs(Inode.new(links_count=1).build())
    assert not in_use_without_xattrs(Inode.new(mode=0o100644).build())
    # An xattr block, low or high half of the number.
    with_block = plain.copy()
    with_block.file_acl = 1234
    assert not in_use_without_xattrs(with_block.build())
    with_block.file_acl = 1 << 40
    assert not in_use_without_xattrs(with_block.build())
    # An in-inode xattr area (its magic right after the extra fields).
    with_area = plain.copy()
    with_area.tail = (0xEA020000).to_bytes(4, "little") + with_area.tail[4:]
    assert not in_use_without_xattrs(with_area.build())
    # Malformed i_extra_isize, or a record too short: not "certainly none".
    bad = bytearray(plain.build())
    bad[128:130] = (6).to_bytes(2, "little")
    assert not in_use_without_xattrs(bytes(bad))
    bad[128:130] = (200).to_bytes(2, "little")
    assert not in_use_without_xattrs(bytes(bad))
    assert not in_use_without_xattrs(b"\x01" * 64)
    # An extra area that fills the record leaves no room for attributes.
    full = bytearray(plain.build())
    full[128:130] = (128).to_bytes(2, "little")
    assert in_use_without_xattrs(bytes(full))


def test_stat_view_matches_the_parsed_inode() -> None:
    import random

    from chanos.fs.format._record import CorruptError
    from chanos.fs.format.inode import Inode, stat_view

    rng = random.Random(7)
    for size, extra in ((128, 0), (256, 0), (256, 4), (256, 16), (256, 20), (256, 32), (512, 32)):
        for _ in range(50):
            raw = bytearray(rng.randbytes(size))
            if size > 128:
                raw[128:130] = extra.to_bytes(2, "little")
            i = Inode.parse(bytes(raw))
            assert stat_view(bytes(raw)) == (
                i.mode,
                i.links_count,
                i.uid,
                i.gid,
                i.size,
                i.blocks_lo,
                i.blocks_high,
                i.flags,
                *i.stat_times(),
                i.generation,
            )
            assert stat_view(memoryview(bytes(raw))) == stat_view(bytes(raw))
    bad = bytearray(256)
    bad[128:130] = (6).to_bytes(2, "little")
    for record in (bytes(bad), bytes(200), bytes(64)):
        try:
            Inode.parse(record)
        except CorruptError:
            pass
        else:  # pragma: no cover - the fixtures are corrupt by construction
            raise AssertionError("expected a corrupt record")
        try:
            stat_view(record)
        except CorruptError:
            continue
        raise AssertionError("stat_view accepted a record Inode.parse refuses")
