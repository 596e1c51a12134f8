"""Htree directory name hashes: legacy, half_md4 and tea, signed and unsigned.

These are the hashes ``ext2fs_dirhash`` (e2fsprogs) and the ext4 driver compute for
dir_index directories: a dx_root / dx_node maps hash ranges to leaf blocks, and
e2fsck checks that every name sits in the block its hash selects.  The signed
variants treat name bytes as signed ``char`` (historic x86 behaviour); which one a
file system uses is recorded in the superblock flags (``signed_directory_hash`` /
``unsigned_directory_hash``), see ``effective_version``.

Hashing is pure integer arithmetic on 32-bit words; it is only needed for indexed
lookups and index maintenance, not on the data path.
"""

from __future__ import annotations

from chanos.fs.format.dirent import (
    DX_HASH_HALF_MD4,
    DX_HASH_HALF_MD4_UNSIGNED,
    DX_HASH_LEGACY,
    DX_HASH_LEGACY_UNSIGNED,
    DX_HASH_TEA,
    DX_HASH_TEA_UNSIGNED,
)
from chanos.fs.format.superblock import FLAG_UNSIGNED_HASH

M = 0xFFFFFFFF
_DEFAULT_SEED = (0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476)
_K2 = 0x5A827999  # 013240474631
_K3 = 0x6ED9EBA1  # 015666365641
_DELTA = 0x9E3779B9


def _rol(x: int, s: int) -> int:
    return ((x << s) | (x >> (32 - s))) & M


def _half_md4(buf: list[int], w: list[int]) -> None:
    a, b, c, d = buf

    def f(x: int, y: int, z: int) -> int:
        return z ^ (x & (y ^ z))

    def g(x: int, y: int, z: int) -> int:
        return ((x & y) + ((x ^ y) & z)) & M

    def h(x: int, y: int, z: int) -> int:
        return x ^ y ^ z

    # Round 1
    a = _rol((a + f(b, c, d) + w[0]) & M, 3)
    d = _rol((d + f(a, b, c) + w[1]) & M, 7)
    c = _rol((c + f(d, a, b) + w[2]) & M, 11)
    b = _rol((b + f(c, d, a) + w[3]) & M, 19)
    a = _rol((a + f(b, c, d) + w[4]) & M, 3)
    d = _rol((d + f(a, b, c) + w[5]) & M, 7)
    c = _rol((c + f(d, a, b) + w[6]) & M, 11)
    b = _rol((b + f(c, d, a) + w[7]) & M, 19)
    # Round 2
    a = _rol((a + g(b, c, d) + w[1] + _K2) & M, 3)
    d = _rol((d + g(a, b, c) + w[3] + _K2) & M, 5)
    c = _rol((c + g(d, a, b) + w[5] + _K2) & M, 9)
    b = _rol((b + g(c, d, a) + w[7] + _K2) & M, 13)
    a = _rol((a + g(b, c, d) + w[0] + _K2) & M, 3)
    d = _rol((d + g(a, b, c) + w[2] + _K2) & M, 5)
    c = _rol((c + g(d, a, b) + w[4] + _K2) & M, 9)
    b = _rol((b + g(c, d, a) + w[6] + _K2) & M, 13)
    # Round 3
    a = _rol((a + h(b, c, d) + w[3] + _K3) & M, 3)
    d = _rol((d + h(a, b, c) + w[7] + _K3) & M, 9)
    c = _rol((c + h(d, a, b) + w[2] + _K3) & M, 11)
    b = _rol((b + h(c, d, a) + w[6] + _K3) & M, 15)
    a = _rol((a + h(b, c, d) + w[1] + _K3) & M, 3)
    d = _rol((d + h(a, b, c) + w[5] + _K3) & M, 9)
    c = _rol((c + h(d, a, b) + w[0] + _K3) & M, 11)
    b = _rol((b + h(c, d, a) + w[4] + _K3) & M, 15)
    buf[0] = (buf[0] + a) & M
    buf[1] = (buf[1] + b) & M
    buf[2] = (buf[2] + c) & M
    buf[3] = (buf[3] + d) & M


def _tea(buf: list[int], w: list[int]) -> None:
    s = 0
    b0, b1 = buf[0], buf[1]
    a, b, c, d = w[0], w[1], w[2], w[3]
    for _ in range(16):
        s = (s + _DELTA) & M
        b0 = (b0 + ((((b1 << 4) + a) & M) ^ ((b1 + s) & M) ^ (((b1 >> 5) + b) & M))) & M
        b1 = (b1 + ((((b0 << 4) + c) & M) ^ ((b0 + s) & M) ^ (((b0 >> 5) + d) & M))) & M
    buf[0] = (buf[0] + b0) & M
    buf[1] = (buf[1] + b1) & M


def _chars(name: bytes, signed: bool) -> list[int]:
    return [c - 256 if signed and c >= 0x80 else c for c in name]


def _str2hashbuf(chars: list[int], length: int, num: int) -> list[int]:
    """Pack up to num*4 characters into num words, padded as e2fsprogs does."""
    pad = (length | (length << 8)) & M
    pad = (pad | (pad << 16)) & M
    out: list[int] = []
    val = pad
    for i, c in enumerate(chars[: num * 4]):
        val = (c + (val << 8)) & M
        if i % 4 == 3:
            out.append(val)
            val = pad
    if len(out) < num:
        out.append(val)
    while len(out) < num:
        out.append(pad)
    return out


def _legacy(chars: list[int]) -> int:
    h0, h1 = 0x12A3FE2D, 0x37ABE8F9
    for c in chars:
        h = (h1 + (h0 ^ ((c * 7152373) & M))) & M
        if h & 0x80000000:
            h = (h - 0x7FFFFFFF) & M
        h1, h0 = h0, h
    return (h0 << 1) & M


def dirhash(
    name: bytes, version: int, seed: tuple[int, int, int, int] | None = None
) -> tuple[int, int]:
    """(hash, minor_hash) of a name, exactly as ``ext2fs_dirhash``.

    ``version``: DX_HASH_* (0..5).  ``seed``: the superblock's s_hash_seed as four
    little-endian words; all zeros or None means the default MD4 seed.
    """
    buf = list(seed) if seed and any(seed) else list(_DEFAULT_SEED)
    minor = 0
    if version in (DX_HASH_LEGACY, DX_HASH_LEGACY_UNSIGNED):
        h = _legacy(_chars(name, version == DX_HASH_LEGACY))
    elif version in (DX_HASH_HALF_MD4, DX_HASH_HALF_MD4_UNSIGNED):
        chars = _chars(name, version == DX_HASH_HALF_MD4)
        n = len(chars)
        p = 0
        while n > 0:
            _half_md4(buf, _str2hashbuf(chars[p:], n, 8))
            n -= 32
            p += 32
        h, minor = buf[1], buf[2]
    elif version in (DX_HASH_TEA, DX_HASH_TEA_UNSIGNED):
        chars = _chars(name, version == DX_HASH_TEA)
        n = len(chars)
        p = 0
        while n > 0:
            _tea(buf, _str2hashbuf(chars[p:], n, 4))
            n -= 16
            p += 16
        h, minor = buf[0], buf[1]
    else:
        raise ValueError(f"unsupported directory hash version {version}")
    return h & ~1 & M, minor


def effective_version(root_hash_version: int, sb_flags: int) -> int:
    """The hash a directory really uses: the dx_root's version, made unsigned when
    the superblock says the file system uses unsigned hashes (as the kernel does)."""
    if root_hash_version <= DX_HASH_TEA and sb_flags & FLAG_UNSIGNED_HASH:
        return root_hash_version + 3
    return root_hash_version
