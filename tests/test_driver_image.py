"""ImageFileDriver: open errors, data path, write cache and queue discipline, errors, events."""

from __future__ import annotations

import errno
import os
import random
import threading

import pytest
import trio
from chanos.drivers import (
    BlockDevice,
    Discard,
    Flush,
    ImageFileDriver,
    IOErrorEvent,
    Read,
    ReadOnlyEvent,
    Write,
)
from chanos.drivers.image_io import BufferPool
from chanos.personality import Channel, ChildSpec, WouldBlock, call, open_supervisor
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

MiB = 1 << 20


@pytest.fixture
async def sup():
    async with open_supervisor(name="test") as s:
        yield s


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "disk.img"
    with open(path, "wb") as f:
        f.truncate(4 * MiB)
    return path


async def start(sup, path, **kw):
    ref = await sup.start(ChildSpec(name="driver", factory=lambda: ImageFileDriver(path, **kw)))
    return ref, BlockDevice(ref)


def file_bytes(path, offset, length):
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(length)


class SyscallLog:
    """Records the data-path system calls the driver issues (wraps os functions)."""

    def __init__(self, monkeypatch, fail=None):
        self.calls: list[tuple[str, int, int]] = []
        self.fail = fail  # (name, offset) -> errno: raise when a call covers that offset
        real_pwritev, real_preadv, real_fdatasync = os.pwritev, os.preadv, os.fdatasync

        def pwritev(fd, bufs, offset, *a):
            n = sum(len(b) for b in bufs)
            self.calls.append(("pwritev", offset, n))
            self._maybe_fail("pwritev", offset, n)
            return real_pwritev(fd, bufs, offset, *a)

        def preadv(fd, bufs, offset, *a):
            n = sum(len(b) for b in bufs)
            self.calls.append(("preadv", offset, n))
            self._maybe_fail("preadv", offset, n)
            return real_preadv(fd, bufs, offset, *a)

        def fdatasync(fd):
            self.calls.append(("fdatasync", 0, 0))
            return real_fdatasync(fd)

        monkeypatch.setattr(os, "pwritev", pwritev)
        monkeypatch.setattr(os, "preadv", preadv)
        monkeypatch.setattr(os, "fdatasync", fdatasync)

    def _maybe_fail(self, name, offset, n):
        for (fname, at), code in (self.fail or {}).items():
            if fname == name and offset <= at < offset + n:
                raise OSError(code, os.strerror(code))

    def of(self, name):
        return [c for c in self.calls if c[0] == name]


# ------------------------------------------------------------------ opening


async def test_missing_path_is_a_clear_error(sup, tmp_path):
    path = tmp_path / "nope.img"
    with pytest.raises(OSError) as ei:
        await start(sup, path)
    assert ei.value.errno == errno.ENOENT
    assert str(path) in str(ei.value) and "no such file" in str(ei.value)


async def test_directory_is_refused(sup, tmp_path):
    with pytest.raises(OSError) as ei:
        await start(sup, tmp_path)
    assert ei.value.errno == errno.EISDIR
    assert "directory" in str(ei.value)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
async def test_unreadable_path_is_a_clear_error(sup, image):
    os.chmod(image, 0)
    with pytest.raises(OSError) as ei:
        await start(sup, image)
    assert ei.value.errno == errno.EACCES
    assert "permission denied" in str(ei.value)


async def test_permission_denied_message(sup, image, monkeypatch):
    # (root can open anything, so the refusal comes from a stand-in for open(2))
    def refuse(path, flags, *a):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(os, "open", refuse)
    with pytest.raises(OSError) as ei:
        await start(sup, image)
    assert ei.value.errno == errno.EACCES
    assert str(image) in str(ei.value) and "reading and writing" in str(ei.value)
    assert "read-only" in str(ei.value)


async def test_size_must_be_whole_blocks(sup, tmp_path):
    path = tmp_path / "odd.img"
    path.write_bytes(bytes(4096 + 100))
    with pytest.raises(OSError) as ei:
        await start(sup, path)
    assert ei.value.errno == errno.EINVAL
    assert "4196 bytes" in str(ei.value) and "whole number of 512-byte blocks" in str(ei.value)
    with pytest.raises(OSError, match="whole number of 4096-byte blocks"):
        await start(sup, tmp_path / "odd.img", block_size=4096)
    (tmp_path / "empty.img").write_bytes(b"")
    with pytest.raises(OSError, match="empty"):
        await start(sup, tmp_path / "empty.img")


async def test_info_and_range_checks(sup, image):
    ref, dev = await start(sup, image, block_size=4096)
    info = await dev.info()
    assert (info.size, info.block_size, info.read_only) == (4 * MiB, 4096, False)
    for bad in (Read(4 * MiB - 10, 11), Read(-1, 5), Write(4 * MiB, b"x"), Discard(0, 5 * MiB)):
        with pytest.raises(OSError) as ei:
            await call(ref, bad)
        assert ei.value.errno == errno.EINVAL
    assert bytes(await dev.read(0, 0)) == b""


# ------------------------------------------------------------------ data path


async def test_write_read_flush_roundtrip(sup, image):
    _ref, dev = await start(sup, image)
    data = random.Random(1).randbytes(3 * 4096 + 17)
    await dev.write(1000, data)
    assert bytes(await dev.read(1000, len(data))) == data  # read-your-writes
    await dev.flush()
    assert file_bytes(image, 1000, len(data)) == data
    # a reply is private: a later write does not change it
    old = await dev.read(0, 4096)
    snapshot = bytes(old)
    await dev.write(0, b"\xff" * 4096)
    assert bytes(old) == snapshot


def test_buffer_pool_reuses_only_unreferenced_buffers():
    pool = BufferPool()
    n = 128 * 1024
    a = pool.get(n)
    view = memoryview(a).toreadonly()[10:20]  # a reply's slice keeps the buffer
    del a
    b = pool.get(n)
    assert b is not view.obj
    b_id = id(b)
    del b
    c = pool.get(n)  # b was released: reused
    assert id(c) == b_id and len(pool.free[n]) == 2
    pooled = {id(view.obj), id(c)}
    del view, c  # now only the pool holds them
    assert id(pool.get(n)) in pooled
    assert len(pool.get(1000)) == 1000  # small sizes are not pooled
    assert 1000 not in pool.free


async def test_large_read_replies_stay_private(sup, image):
    _ref, dev = await start(sup, image)
    chunk = 128 * 1024
    for i in range(8):
        await dev.write(i * chunk, bytes([i + 1]) * chunk)
    await dev.flush()
    kept = []
    for _round in range(3):
        for i in range(8):
            reply = await dev.read(i * chunk, chunk)
            if _round == 0 and i % 2:
                kept.append((i, reply[5000:6000]))  # a slice of an old reply, kept
    for i, piece in kept:
        assert bytes(piece) == bytes([i + 1]) * 1000


async def test_writes_are_cached_until_flush_and_merged(sup, image, monkeypatch):
    _ref, dev = await start(sup, image)
    log = SyscallLog(monkeypatch)
    blocks = list(range(32))
    random.Random(2).shuffle(blocks)
    for b in blocks:  # non-overlapping, out of order, byte-contiguous as a set
        await dev.write(b * 4096, bytes([b]) * 4096)
    assert log.of("pwritev") == []  # acknowledged, still in the write cache
    await dev.flush()
    assert log.calls == [("pwritev", 0, 32 * 4096), ("fdatasync", 0, 0)]
    for b in range(32):
        assert file_bytes(image, b * 4096, 4096) == bytes([b]) * 4096


async def test_nothing_crosses_a_flush(sup, image, monkeypatch):
    _ref, dev = await start(sup, image)
    log = SyscallLog(monkeypatch)
    await dev.write(0, b"a" * 4096)
    await dev.write(4096, b"b" * 4096)
    await dev.flush()
    await dev.write(8192, b"c" * 4096)  # adjacent to the first run, but after the flush
    await dev.flush()
    await dev.flush()  # nothing written since: no second fdatasync
    assert log.calls == [
        ("pwritev", 0, 8192),
        ("fdatasync", 0, 0),
        ("pwritev", 8192, 4096),
        ("fdatasync", 0, 0),
    ]


async def test_overlapping_writes_keep_their_order(sup, image):
    _ref, dev = await start(sup, image)
    await dev.write(0, b"A" * 8192)
    await dev.write(4096, b"B" * 4096)
    await dev.write(0, b"C" * 10)
    await dev.write(4000, b"D" * 200)
    await dev.flush()
    want = bytearray(b"A" * 8192)
    want[4096:8192] = b"B" * 4096
    want[0:10] = b"C" * 10
    want[4000:4200] = b"D" * 200
    assert file_bytes(image, 0, 8192) == want


async def test_read_of_queued_range_writes_out_first(sup, image, monkeypatch):
    _ref, dev = await start(sup, image)
    log = SyscallLog(monkeypatch)
    await dev.write(8192, b"q" * 4096)
    await dev.read(0, 4096)  # elsewhere: served without writing out
    assert log.of("pwritev") == []
    assert bytes(await dev.read(8000, 500)) == bytes(192) + b"q" * 308
    assert log.of("pwritev") == [("pwritev", 8192, 4096)]


def stuck_pwritev(monkeypatch) -> threading.Event:
    """Make every pwritev wait until the returned event is set (at most 10 s)."""
    gate = threading.Event()
    real = os.pwritev

    def stuck(fd, bufs, offset, *a):
        gate.wait(10)
        return real(fd, bufs, offset, *a)

    monkeypatch.setattr(os, "pwritev", stuck)
    return gate


BIG = 256 * 1024  # a run this large is written out by the worker thread


async def test_read_back_of_written_data_waits_for_no_write_out(sup, image, monkeypatch):
    gate = stuck_pwritev(monkeypatch)
    _ref, dev = await start(sup, image, write_behind=2 * BIG)
    await dev.write(0, b"a" * BIG)
    await dev.write(BIG, b"b" * BIG)  # high-water: this write-out hangs in the worker
    await dev.write(2 * BIG, b"c" * 4096)  # queued behind it
    await dev.write(BIG + 100, b"B" * 10)  # newer than the one in flight
    with trio.fail_after(2):
        assert bytes(await dev.read(2 * BIG + 10, 100)) == b"c" * 100  # from the queue
        assert bytes(await dev.read(0, 4096)) == b"a" * 4096  # from the write-out in flight
        assert bytes(await dev.read(BIG + 100, 10)) == b"B" * 10  # newest write wins
    gate.set()
    # Straddling the newer partial write: only the file after a write-out has it right.
    got = bytes(await dev.read(BIG, 4096))
    assert got == b"b" * 100 + b"B" * 10 + b"b" * (4096 - 110)
    await dev.flush()
    assert file_bytes(image, BIG, 4096) == got
    assert file_bytes(image, 0, 4096) == b"a" * 4096
    assert file_bytes(image, 2 * BIG, 4096) == b"c" * 4096


async def test_write_cache_is_bounded(sup, image, monkeypatch):
    _ref, dev = await start(sup, image, write_behind=64 * 1024)
    log = SyscallLog(monkeypatch)
    for i in range(40):
        await dev.write(i * 4096, b"w" * 4096)
    # 64 KiB high-water: written out by the 16th and the 32nd write (small runs: within
    # their turns), 8 still cached; a read of what was written out writes nothing more
    assert bytes(await dev.read(20 * 4096, 4096)) == b"w" * 4096
    assert log.of("pwritev") == [("pwritev", 0, 16 * 4096), ("pwritev", 16 * 4096, 16 * 4096)]
    assert file_bytes(image, 31 * 4096, 4096) == b"w" * 4096
    assert file_bytes(image, 32 * 4096, 4096) == bytes(4096)


async def test_large_write_out_runs_in_the_background(sup, image, monkeypatch):
    gate = stuck_pwritev(monkeypatch)
    _ref, dev = await start(sup, image, write_behind=BIG)
    await dev.write(0, b"a" * BIG)  # reaches the high-water mark: the write-out starts
    with trio.fail_after(2):
        await dev.write(BIG, b"b" * 4096)  # acknowledged while the write-out hangs
        assert bytes(await dev.read(2 * MiB, 16)) == bytes(16)  # an unrelated read passes
    flushed = trio.Event()

    async def flusher():
        await dev.flush()
        flushed.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(flusher)
        await trio.sleep(0.1)
        assert not flushed.is_set()  # the flush waits for the write-out in flight
        gate.set()
    assert file_bytes(image, 0, BIG + 4096) == b"a" * BIG + b"b" * 4096


async def test_small_write_outs_run_in_the_turn_on_the_loop_thread(sup, image, monkeypatch):
    # From a worker thread they would make every system call of the event loop wait for
    # the interpreter lock; a large run goes to the worker, and so does the flush.
    threads = []
    real_pwritev, real_fdatasync = os.pwritev, os.fdatasync

    def pwritev(fd, bufs, offset, *a):
        threads.append(("pwritev", sum(len(b) for b in bufs), on_loop()))
        return real_pwritev(fd, bufs, offset, *a)

    def fdatasync(fd):
        threads.append(("fdatasync", 0, on_loop()))
        return real_fdatasync(fd)

    loop = threading.current_thread()

    def on_loop():
        return threading.current_thread() is loop

    monkeypatch.setattr(os, "pwritev", pwritev)
    monkeypatch.setattr(os, "fdatasync", fdatasync)
    _ref, dev = await start(sup, image, write_behind=BIG)
    for i in range(63):  # scattered 4 KiB writes: one run each
        await dev.write(i * 8192, b"s" * 4096)
    assert threads == []
    await dev.write(63 * 8192, b"s" * 4096)  # the high-water mark: written before the answer
    assert threads == [("pwritev", 4096, True)] * 64
    assert file_bytes(image, 63 * 8192, 4096) == b"s" * 4096
    await dev.write(MiB, b"L" * BIG)  # one large run, written out by the worker
    await dev.flush()
    assert threads[64:] == [("pwritev", BIG, False), ("fdatasync", 0, False)]
    assert file_bytes(image, MiB, BIG) == b"L" * BIG


async def test_small_write_out_behind_a_large_one_waits_then_runs_on_the_loop_thread(
    sup, image, monkeypatch
):
    # Handed to the worker behind the large one, each write-out after it would find the
    # one before in flight and follow it there, never coming back to the loop's thread.
    loop = threading.current_thread()
    gate = threading.Event()
    real = os.pwritev
    threads = []

    def pwritev(fd, bufs, offset, *a):
        size = sum(len(b) for b in bufs)
        on_loop = threading.current_thread() is loop
        threads.append((size, on_loop))
        if not on_loop:
            gate.wait(10)
        return real(fd, bufs, offset, *a)

    monkeypatch.setattr(os, "pwritev", pwritev)
    _ref, dev = await start(sup, image, write_behind=BIG)
    await dev.write(MiB, b"L" * BIG)  # one large run: the worker takes it and hangs
    for i in range(63):  # scattered 4 KiB writes, queued
        await dev.write(i * 8192, b"s" * 4096)
    done = trio.Event()

    async def last():
        await dev.write(63 * 8192, b"s" * 4096)  # the high-water mark
        done.set()

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(last)
            await trio.sleep(0.1)
            assert not done.is_set()  # behind the write-out in flight
            assert threads == [(BIG, False)]
            gate.set()
            with trio.fail_after(5):
                await done.wait()
    finally:
        gate.set()
    assert threads[1:] == [(4096, True)] * 64
    for i in range(66):  # and every write-out after it stays on the loop's thread
        await dev.write(2 * MiB + i * 8192, b"t" * 4096)
    assert all(on_loop for _size, on_loop in threads[1:]) and len(threads) == 129
    await dev.flush()
    assert file_bytes(image, MiB, BIG) == b"L" * BIG
    assert file_bytes(image, 63 * 8192, 4096) == b"s" * 4096


async def test_write_through_without_cache(sup, image, monkeypatch):
    _ref, dev = await start(sup, image, write_behind=0)
    log = SyscallLog(monkeypatch)
    await dev.write(0, b"1" * 512)
    assert file_bytes(image, 0, 512) == b"1" * 512
    assert log.of("pwritev") == [("pwritev", 0, 512)]


async def test_large_write_outs_start_their_writeback(sup, image, monkeypatch):
    from chanos.drivers import image_io

    started = []
    monkeypatch.setattr(image_io, "start_writeback", lambda fd, o, n: started.append((o, n)))
    _ref, dev = await start(sup, image, write_behind=MiB)
    for i in range(4):  # adjacent: one run of 512 KiB, handed to the host's writeback
        await dev.write(2 * MiB + i * 128 * 1024, b"M" * (128 * 1024))
    await dev.write(3 * MiB, b"t" * 4096)  # small (metadata-sized): left to the host
    await dev.flush()
    assert started == [(2 * MiB, 512 * 1024)]
    assert file_bytes(image, 2 * MiB, 512 * 1024) == b"M" * (512 * 1024)


async def test_caller_buffer_reuse_is_safe(sup, image):
    _ref, dev = await start(sup, image)
    buf = bytearray(b"x" * 4096)
    await dev.write(0, buf)
    buf[:] = b"y" * 4096  # the driver copied what it queued
    await dev.write(4096, memoryview(buf))
    await dev.flush()
    assert file_bytes(image, 0, 8192) == b"x" * 4096 + b"y" * 4096


async def test_views_of_bytes_are_queued_without_a_copy(sup, image, monkeypatch):
    _ref, dev = await start(sup, image, write_behind=64 * 1024)
    written = []
    real_pwritev = os.pwritev

    def pwritev(fd, bufs, offset, *a):
        written.extend(bufs)
        return real_pwritev(fd, bufs, offset, *a)

    monkeypatch.setattr(os, "pwritev", pwritev)
    payload = bytes(range(256)) * 64  # 16 KiB, like a WRITE request's payload
    view = memoryview(payload)
    buf = bytearray(b"b" * 4096)
    await dev.write(0, view[:8192])  # immutable: queued as it is
    await dev.write(8192, view[8192:])
    await dev.write(65536, memoryview(buf))  # a view of a mutable buffer: copied
    buf[:] = b"c" * 4096
    await dev.flush()
    assert [b.obj is payload for b in written] == [True, True, False]
    assert file_bytes(image, 0, 16384) == payload
    assert file_bytes(image, 65536, 4096) == b"b" * 4096


async def test_discard_punches_a_hole(sup, image):
    _ref, dev = await start(sup, image)
    await dev.write(0, b"z" * MiB)
    await dev.flush()
    before = os.stat(image).st_blocks
    await dev.write(MiB - 4096, b"late" * 1024)  # queued write inside the range: discarded too
    await dev.discard(256 * 1024, 768 * 1024)
    assert bytes(await dev.read(256 * 1024, 768 * 1024)) == bytes(768 * 1024)
    assert bytes(await dev.read(0, 256 * 1024)) == b"z" * (256 * 1024)
    await dev.flush()
    assert os.stat(image).st_blocks < before  # the range no longer occupies space
    assert os.path.getsize(image) == 4 * MiB


async def test_read_only_image(sup, image):
    with open(image, "r+b") as f:
        f.write(b"ro" * 256)
    ref, dev = await start(sup, image, read_only=True)
    assert (await dev.info()).read_only
    assert bytes(await dev.read(0, 4)) == b"roro"
    for msg in (Write(0, b"x"), Discard(0, 512)):
        with pytest.raises(OSError) as ei:
            await call(ref, msg)
        assert ei.value.errno == errno.EROFS
    await dev.flush()  # nothing to do, not an error
    assert file_bytes(image, 0, 4) == b"roro"


async def test_stop_writes_the_cache_back(image):
    async with open_supervisor(name="t") as s:
        _ref, dev = await start(s, image)
        await dev.write(512, b"kept" * 128)
    assert file_bytes(image, 512, 512) == b"kept" * 128


async def test_prefetch_reads_ahead_in_a_thread_and_stop_waits_for_it(image, monkeypatch):
    calls = []
    release = threading.Event()
    real_fadvise = os.posix_fadvise

    def fadvise(fd, offset, length, advice):
        release.wait(10)
        os.fstat(fd)  # still open: the driver waited for this before closing it
        calls.append((offset, length, advice, threading.current_thread() is main))
        return real_fadvise(fd, offset, length, advice)

    main = threading.current_thread()
    monkeypatch.setattr(os, "posix_fadvise", fadvise)
    async with open_supervisor(name="t") as s:
        ref, dev = await start(s, image)
        await dev.write(0, b"p" * 8192)
        await dev.flush()
        # answered at once, while the advice is still running in its thread
        assert await dev.prefetch(0, MiB) is None
        await dev.prefetch(MiB, MiB)
        await dev.prefetch(2 * MiB, MiB)  # a third in flight: dropped
        assert await dev.read(0, 8192) == b"p" * 8192
        # hints that make no sense are ignored, not refused
        for o, n in ((-1, 10), (0, 0), (4 * MiB, 512), (0, 5 * MiB)):
            assert await dev.prefetch(o, n) is None
        trio.lowlevel.current_trio_token().run_sync_soon(release.set)  # once stop waits
        await ref.stop()  # waits for the advice before closing the file
    willneed = os.POSIX_FADV_WILLNEED
    assert sorted(calls) == [(0, MiB, willneed, False), (MiB, MiB, willneed, False)]


async def test_truncated_image_read_is_eio(sup, image):
    _ref, dev = await start(sup, image)
    os.truncate(image, MiB)
    with pytest.raises(OSError) as ei:
        await dev.read(2 * MiB, 4096)
    assert ei.value.errno == errno.EIO and "short read" in str(ei.value)


# ------------------------------------------------------------------ errors and events


async def test_failed_write_lands_on_its_range_only(sup, image, monkeypatch):
    _ref, dev = await start(sup, image)
    events = Channel(16)
    await dev.subscribe(events)
    bad = 5 * 4096 + 100
    log = SyscallLog(monkeypatch, fail={("pwritev", bad): errno.EIO})
    for i in range(8):
        await dev.write(i * 4096, bytes([i + 1]) * 4096)
    with pytest.raises(OSError) as ei:
        await dev.flush()
    assert ei.value.errno == errno.EIO
    assert f"at {5 * 4096}" in str(ei.value)
    # the merged write failed, then each write was retried alone
    assert log.of("pwritev")[0] == ("pwritev", 0, 8 * 4096)
    assert len(log.of("pwritev")) == 9
    ev = events.receive_nowait()
    assert ev == IOErrorEvent(str(image), "write", 5 * 4096, 4096, errno.EIO)
    for i in range(8):
        want = bytes(4096) if i == 5 else bytes([i + 1]) * 4096
        assert file_bytes(image, i * 4096, 4096) == want
    await dev.flush()  # the error was reported once


async def test_read_error_is_answered_and_published(sup, image, monkeypatch):
    _ref, dev = await start(sup, image)
    events = Channel(4)
    await dev.subscribe(events)
    SyscallLog(monkeypatch, fail={("preadv", 12345): errno.EIO})
    with pytest.raises(OSError) as ei:
        await dev.read(12288, 4096)
    assert ei.value.errno == errno.EIO
    assert events.receive_nowait() == IOErrorEvent(str(image), "read", 12288, 4096, errno.EIO)
    assert bytes(await dev.read(0, 4096)) == bytes(4096)  # the device goes on


async def test_erofs_from_the_medium_turns_device_read_only(sup, image, monkeypatch):
    _ref, dev = await start(sup, image, write_behind=0)
    events = Channel(4)
    await dev.subscribe(events)
    SyscallLog(monkeypatch, fail={("pwritev", 0): errno.EROFS})
    with pytest.raises(OSError) as ei:
        await dev.write(0, b"x" * 512)
    assert ei.value.errno == errno.EROFS
    ev = events.receive_nowait()
    assert isinstance(ev, ReadOnlyEvent)
    assert (await dev.info()).read_only
    with pytest.raises(OSError):
        await dev.write(4096, b"y")  # refused by the driver now
    with pytest.raises(WouldBlock):
        events.receive_nowait()  # announced once


# ------------------------------------------------------------------ concurrency


async def test_many_concurrent_clients(sup, image):
    ref, dev = await start(sup, image, write_behind=256 * 1024)
    rng = random.Random(9)
    regions = [(i * 64 * 1024, rng.randrange(1, 64 * 1024)) for i in range(48)]
    payload = {off: rng.randbytes(n) for off, n in regions}

    async def client(off, n):
        # each client writes its region in pieces, reads it back, flushes
        data = payload[off]
        for pos in range(0, n, 5000):
            await dev.write(off + pos, data[pos : pos + 5000])
            await trio.sleep(0)
        assert bytes(await dev.read(off, n)) == data
        await call(ref, Flush())

    async with trio.open_nursery() as nursery:
        for off, n in regions:
            nursery.start_soon(client, off, n)
    for off, n in regions:
        assert file_bytes(image, off, n) == payload[off]


# ------------------------------------------------------------------ model check

_OPS = st.lists(
    st.tuples(
        st.sampled_from(["w", "w", "w", "r", "r", "f", "d"]),
        st.integers(0, 63),  # offset in 512-byte sectors
        st.integers(1, 24),  # length in sectors
        st.integers(0, 255),
    ),
    min_size=1,
    max_size=40,
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(ops=_OPS, write_behind=st.sampled_from([0, 2048, 16384, 1 << 20]))
def test_driver_matches_a_byte_array_model(tmp_path, ops, write_behind):
    """Any mix of requests through the write cache behaves like plain byte-array updates;
    after a flush the file holds the model exactly."""
    path = tmp_path / "model.img"
    size = 96 * 512
    base = random.Random(len(ops)).randbytes(size)
    path.write_bytes(base)

    async def main():
        model = bytearray(base)
        async with open_supervisor(name="m") as s:
            _ref, dev = await start(s, path, write_behind=write_behind)
            for kind, sec, n, byte in ops:
                off, length = sec * 512, min(n * 512, size - sec * 512)
                if kind == "w":
                    data = bytes([byte]) * (length - byte % 7)
                    await dev.write(off + byte % 7, data)
                    model[off + byte % 7 : off + length] = data
                elif kind == "r":
                    assert bytes(await dev.read(off, length)) == model[off : off + length]
                elif kind == "d":
                    await dev.discard(off, length)
                    model[off : off + length] = bytes(length)
                else:
                    await dev.flush()
                    assert path.read_bytes() == model
            await dev.flush()
            assert path.read_bytes() == model

    trio.run(main)


async def test_file_closed_when_supervisor_leaves_on_error(image):
    import gc

    before = len(os.listdir("/proc/self/fd"))
    with pytest.raises(RuntimeError):
        async with open_supervisor(name="t") as s:
            _ref, dev = await start(s, image)
            await dev.write(0, b"x")
            assert len(os.listdir("/proc/self/fd")) == before + 1
            raise RuntimeError("boom")
    del _ref, dev
    gc.collect()
    assert len(os.listdir("/proc/self/fd")) == before
