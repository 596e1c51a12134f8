"""Htree name hashes against debugfs's dx_hash, and against a real e2fsck-built index."""

from __future__ import annotations

import random
import re
import subprocess
import uuid

import pytest
import test_format_common as common
from chanos.fs.format import dirent as D
from chanos.fs.format.dirhash import dirhash, effective_version
from chanos.fs.format.superblock import FLAG_SIGNED_HASH, FLAG_UNSIGNED_HASH
from test_format_common import DEBUGFS, Image

populated = common.populated  # session fixtures
htree_image = common.htree_image

SEED = "5baef9be-019f-4158-bcad-635b2f6ce37a"
_ALPHABET = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-+="


def _names() -> list[bytes]:
    rnd = random.Random(1234)
    names = [b"a", b".", b"..", b"hello", b"x" * 255, bytes(range(0x80, 0x80 + 40))]
    for n in (1, 3, 4, 15, 16, 17, 31, 32, 33, 64, 100, 200):
        chars = _ALPHABET + bytes(range(0x80, 0x100))
        names.append(bytes(rnd.choice(chars) for _ in range(n)))
    return names


def _debugfs_hashes(img, requests: list[tuple[bytes, int, str | None]]) -> list[tuple[int, int]]:
    lines = []
    for name, version, seed in requests:
        line = b"dx_hash -h HASHALG_%d " % version
        if seed:
            line += b"-s " + seed.encode() + b" "
        lines.append(line + name)
    p = subprocess.run(
        [DEBUGFS, "-f", "-", str(img)], input=b"\n".join(lines) + b"\n", capture_output=True
    )
    out = re.findall(rb"is 0x([0-9a-f]+) \(minor 0x([0-9a-f]+)\)", p.stdout)
    assert len(out) == len(requests), p.stdout[-500:]
    return [(int(h, 16), int(m, 16)) for h, m in out]


def test_hashes_match_debugfs(populated: Image) -> None:
    seed_words = tuple(
        int.from_bytes(uuid.UUID(SEED).bytes[i : i + 4], "little") for i in range(0, 16, 4)
    )
    reqs = [(n, v, s) for n in _names() for v in range(6) for s in (None, SEED)]
    theirs = _debugfs_hashes(populated.path, reqs)
    for (name, version, seed), want in zip(reqs, theirs, strict=True):
        got = dirhash(name, version, seed_words if seed else None)
        assert got == want, (name, version, seed)


def test_signed_and_unsigned_differ_only_for_high_bytes() -> None:
    for v in (0, 1, 2):
        assert dirhash(b"plain-ascii", v) == dirhash(b"plain-ascii", v + 3)
        assert dirhash(b"h\xe9llo", v) != dirhash(b"h\xe9llo", v + 3)


def test_effective_version() -> None:
    assert effective_version(1, FLAG_SIGNED_HASH) == 1
    assert effective_version(1, FLAG_UNSIGNED_HASH) == 4
    assert effective_version(2, FLAG_UNSIGNED_HASH) == 5
    with pytest.raises(ValueError):
        dirhash(b"x", 6)  # siphash needs casefold+encryption: not supported


def test_every_name_sits_where_its_hash_says(htree_image) -> None:
    """Walk the e2fsck-built index: each leaf holds exactly the hashes of its range."""
    image, ino = htree_image
    blocks = image.file_blocks(ino)
    root = D.parse_dx_root(blocks[0])
    assert root is not None
    version = effective_version(root.hash_version, image.sb.flags)
    seed = image.sb.hash_seed_words

    def leaves(entries, lo, hi, level):
        for k, e in enumerate(entries):
            start = lo if k == 0 else e.hash
            end = entries[k + 1].hash if k + 1 < len(entries) else hi
            if level:
                node = D.parse_dx_node(blocks[e.block])
                assert node is not None
                yield from leaves(node.entries, start, end, level - 1)
            else:
                yield e.block, start, end

    checked = 0
    for blk, lo, hi in leaves(root.entries, 0, 1 << 32, root.indirect_levels):
        for r in D.live_entries(blocks[blk]):
            h, _ = dirhash(r.name, version, seed)
            # The low bit of an index hash marks a collision run continuing from the
            # previous block: such a block may also hold hashes equal to its start.
            in_range = lo & ~1 <= h and (h < hi or (hi & 1 and h == hi & ~1))
            assert in_range, (r.name, hex(h), hex(lo), hex(hi))
            checked += 1
    assert checked == 6001  # 6000 links + "f"


def test_indexed_lookup_finds_every_name(htree_image) -> None:
    """Descending the index by hash (dx_select) reaches the block holding each name."""
    image, ino = htree_image
    blocks = image.file_blocks(ino)
    root = D.parse_dx_root(blocks[0])
    version = effective_version(root.hash_version, image.sb.flags)
    seed = image.sb.hash_seed_words
    names = [r.name for b in blocks for r in D.live_entries(b) if r.name not in (b".", b"..")]
    assert len(names) == 6001
    for name in names[::7]:
        h, _ = dirhash(name, version, seed)
        entries, levels = root.entries, root.indirect_levels
        while True:
            blk = entries[D.dx_select(entries, h)].block
            if not levels:
                break
            entries, levels = D.parse_dx_node(blocks[blk]).entries, levels - 1
        # (No hash collision straddles two leaves in this data set, so the selected
        # leaf must hold the name; the kernel would otherwise read on.)
        assert D.find(blocks[blk], name) is not None, name
    assert D.dx_select((D.DxEntry(0, 1),), 12345) == 0
    ents = (D.DxEntry(0, 1), D.DxEntry(100, 2), D.DxEntry(201, 3))
    assert [D.dx_select(ents, h) for h in (0, 98, 100, 198, 200, 202, 1 << 31)] == [
        0,
        0,
        1,
        1,
        2,
        2,
        2,
    ]
