"""Directory insert hints: the block of the latest insert is tried first, from the record
of its latest insert on, and the result is still a valid, compact directory."""

from __future__ import annotations

import random

from chanos.fs import directory as directory_mod
from chanos.fs.directory import Directory, first_block
from chanos.fs.format import dirent


class MemData:
    """The part of FileData a Directory uses, over a bytearray."""

    def __init__(self, content: bytes = b"") -> None:
        self.buf = bytearray(content)

    async def read(self, offset: int, size: int) -> bytes:
        return bytes(self.buf[offset : offset + size])

    async def write(self, offset: int, data, *, size=None) -> int:
        end = offset + len(data)
        if end > len(self.buf):
            self.buf.extend(bytes(end - len(self.buf)))
        self.buf[offset:end] = data
        return len(data)


async def _new_dir(bs: int) -> tuple[Directory, MemData]:
    data = MemData(bytes(first_block(bs, 12, 2)))
    d = Directory(data, bs, 1, max_inode=100_000)
    await d.load()
    return d, data


async def test_in_order_inserts_scan_only_the_tail(monkeypatch) -> None:
    d, _ = await _new_dir(4096)
    scanned: list[int] = []
    real_insert = dirent.insert

    def counting_insert(block, ino, name, ft):
        scanned.append(sum(1 for _ in dirent.records(block)))
        return real_insert(block, ino, name, ft)

    monkeypatch.setattr(directory_mod.dirent, "insert", counting_insert)
    for i in range(600):  # about three 4 KiB blocks of 20-byte records
        await d.add(b"file-%06d" % i, 100 + i, 1)
    assert d.nblocks >= 3
    # Each insert looked at the record of the previous insert and the new one, except
    # the first in a block and the full-block fallback when a block fills up.
    assert sum(1 for n in scanned if n > 2) <= 3 * d.nblocks
    assert len(scanned) < 600 + 3 * d.nblocks


async def test_random_adds_and_removes_stay_valid_and_compact() -> None:
    rnd = random.Random(4)
    d, data = await _new_dir(1024)
    model: dict[bytes, int] = {}
    positions: dict[bytes, int] = {}
    for step in range(3000):
        if model and rnd.random() < 0.45:
            name = rnd.choice(sorted(model))
            assert await d.remove(name) == (model.pop(name), 1)
            del positions[name]
        else:
            name = b"n%05d" % step + b"x" * rnd.randrange(0, 60)
            # A block is appended only if no block had room for the entry.
            room_before = any(
                dirent.has_room(data.buf[i * 1024 : (i + 1) * 1024], len(name))
                for i in range(d.nblocks)
            )
            nblocks = d.nblocks
            positions[name] = await d.add(name, 20 + step, 1)
            model[name] = 20 + step
            if d.nblocks > nblocks:
                assert not room_before
        if step % 250 == 0 or step == 2999:
            fresh = Directory(MemData(bytes(data.buf)), 1024, d.nblocks, max_inode=100_000)
            await fresh.load()
            assert not fresh.corrupt
            got = {e.name: (e.position, e.inode) for e in await fresh.entries()}
            want = {n: (positions[n], ino) for n, ino in model.items()}
            want[b"."] = got[b"."]
            want[b".."] = got[b".."]
            assert got == want


async def test_a_directory_larger_than_its_cache_reads_evicted_blocks_back() -> None:
    """With room for two blocks in memory, a directory of many blocks still finds,
    adds, replaces, removes and lists every entry, and what it wrote is what a fresh
    load of the bytes on disk sees."""
    rnd = random.Random(11)
    data = MemData(bytes(first_block(1024, 12, 2)))
    d = Directory(data, 1024, 1, max_inode=100_000, cache_bytes=2 * 1024)
    await d.load()
    model: dict[bytes, int] = {}
    for step in range(2500):
        roll = rnd.random()
        if model and roll < 0.3:
            name = rnd.choice(sorted(model))
            assert await d.remove(name) == (model.pop(name), 1)
        elif model and roll < 0.4:
            name = rnd.choice(sorted(model))
            assert await d.replace(name, 70_000 + step, 1) == (model[name], 1)
            model[name] = 70_000 + step
        else:
            name = b"e%05d" % step + b"z" * rnd.randrange(0, 30)
            await d.add(name, 20 + step, 1)
            model[name] = 20 + step
        assert len(d._cache) <= 2
    assert d.nblocks > 10
    for name, ino in model.items():
        assert await d.lookup(name) == (ino, 1)
    assert await d.lookup(b"e99999") is None
    listed = {e.name: e.inode for e in await d.entries() if e.name not in (b".", b"..")}
    assert listed == model
    assert await d.dotdot() == 2 and not d.is_empty()
    fresh = Directory(MemData(bytes(data.buf)), 1024, d.nblocks, max_inode=100_000)
    await fresh.load()
    assert {e.name: e.inode for e in await fresh.entries() if e.name not in (b".", b"..")} == model
