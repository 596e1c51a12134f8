"""jbd2 superblock codec and the needs-recovery test, on mkfs-made journals."""

from __future__ import annotations

import struct

import pytest
import test_format_common as common
from chanos.fs.format import features as F
from chanos.fs.format._record import CorruptError
from chanos.fs.format.journal import (
    BLOCKTYPE_SUPERBLOCK_V2,
    JBD2_MAGIC,
    JournalSuperblock,
    needs_recovery,
)
from test_format_common import Image, dumpe2fs_header

populated = common.populated  # the session fixture


def _journal_sb_raw(image: Image) -> bytes:
    ino = image.sb.journal_inum
    first = image.extents(ino)[0]
    assert first.logical == 0
    return image.block(first.physical)[:1024]


def test_journal_superblock_matches_dumpe2fs(populated: Image) -> None:
    raw = _journal_sb_raw(populated)
    jsb = JournalSuperblock.parse_checked(raw)
    h = dumpe2fs_header(populated.path)
    assert jsb.h_magic == JBD2_MAGIC and jsb.h_blocktype == BLOCKTYPE_SUPERBLOCK_V2
    assert jsb.is_v2
    assert jsb.blocksize == populated.bs
    assert jsb.maxlen == int(h["Total journal blocks"])
    assert jsb.sequence == int(h["Journal sequence"], 16)
    assert jsb.start == int(h["Journal start"]) == 0
    assert h["Journal features"] == "(none)"
    assert (jsb.feature_compat, jsb.feature_incompat, jsb.feature_ro_compat) == (0, 0, 0)
    assert jsb.first == 1
    assert jsb.is_clean
    assert jsb.build() == raw
    assert not needs_recovery(populated.sb.feature_incompat, jsb)


def test_needs_recovery() -> None:
    jsb = JournalSuperblock.new(h_magic=JBD2_MAGIC, h_blocktype=4, blocksize=4096)
    assert not needs_recovery(0, jsb)
    assert needs_recovery(F.INCOMPAT_RECOVER, jsb)
    assert needs_recovery(F.INCOMPAT_RECOVER, None)
    assert not needs_recovery(0, None)
    jsb.start = 1
    assert needs_recovery(0, jsb) and not jsb.is_clean
    raw = jsb.build()
    assert struct.unpack_from(">I", raw, 0x1C)[0] == 1  # big-endian s_start


def test_recover_flag_seen_by_dumpe2fs(populated: Image, tmp_path) -> None:
    """Setting RECOVER through the superblock codec is what e2fsprogs reads."""
    img = tmp_path / "r.img"
    img.write_bytes(populated.data)
    sb = Image.open(img).sb
    sb.feature_incompat |= F.INCOMPAT_RECOVER
    with open(img, "r+b") as f:
        f.seek(1024)
        f.write(sb.build())
    assert "needs_recovery" in dumpe2fs_header(img)["Filesystem features"].split()
    assert F.check(Image.open(img).sb).needs_recovery


@pytest.mark.parametrize(
    ("offset", "value", "why"),
    [(0, 0x12345678, "magic"), (4, 2, "type"), (12, 1000, "block size")],
)
def test_bad_journal_superblock(populated: Image, offset: int, value: int, why: str) -> None:
    raw = bytearray(_journal_sb_raw(populated))
    struct.pack_into(">I", raw, offset, value)
    with pytest.raises(CorruptError, match=why):
        JournalSuperblock.parse_checked(raw)
