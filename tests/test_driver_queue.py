"""Queue discipline and write-log/crash model: pure planning and image reconstruction."""

from __future__ import annotations

import random

from chanos.drivers.protocol import Discard, Flush, Read, Write
from chanos.drivers.queue import DiscardRun, FlushRun, ReadRun, WriteRun, plan
from chanos.drivers.writelog import (
    SECTOR,
    LoggedFlush,
    LoggedWrite,
    WriteLog,
    apply_crash,
    choose_crash,
)
from hypothesis import given, settings
from hypothesis import strategies as st


def _batch(*msgs):
    return list(enumerate(msgs))


def _execute(runs, batch, mem: bytearray) -> dict[int, bytes]:
    """Run a plan on a bytearray the way a driver would; returns read replies by index."""
    replies: dict[int, bytes] = {}
    for run in runs:
        match run:
            case ReadRun():
                pos = run.offset
                for idx, n in run.members:
                    replies[idx] = bytes(mem[pos : pos + n])
                    pos += n
                assert pos == run.offset + run.length
            case WriteRun():
                pos = run.offset
                for _, view in run.members:
                    mem[pos : pos + len(view)] = view
                    pos += len(view)
                assert pos == run.offset + run.length
            case DiscardRun():
                mem[run.offset : run.offset + run.length] = bytes(run.length)
            case FlushRun():
                pass
    return replies


def _sequential(batch, mem: bytearray) -> dict[int, bytes]:
    replies = {}
    for idx, m in batch:
        match m:
            case Read(offset=o, length=n):
                replies[idx] = bytes(mem[o : o + n])
            case Write(offset=o, data=d):
                mem[o : o + len(d)] = d
            case Discard(offset=o, length=n):
                mem[o : o + n] = bytes(n)
    return replies


def test_contiguous_reads_merge_even_out_of_order():
    b = _batch(Read(8192, 4096), Read(0, 4096), Read(4096, 4096), Read(65536, 512))
    runs = plan(b)
    assert runs == [
        ReadRun(0, 12288, [(1, 4096), (2, 4096), (0, 4096)]),
        ReadRun(65536, 512, [(3, 512)]),
    ]


def test_contiguous_writes_merge_into_one_vectored_write():
    b = _batch(*(Write(i * 4096, bytes([i]) * 4096) for i in (3, 1, 0, 2)))
    runs = plan(b)
    assert len(runs) == 1
    run = runs[0]
    assert isinstance(run, WriteRun)
    assert (run.offset, run.length) == (0, 4 * 4096)
    assert [idx for idx, _ in run.members] == [2, 1, 3, 0]


def test_overlapping_writes_keep_arrival_order():
    b = _batch(Write(4096, b"B" * 4096), Write(0, b"A" * 8192))
    runs = plan(b)
    # Not sorted: the second write must land last, so the result is all A.
    assert [r.offset for r in runs] == [4096, 0]
    mem = bytearray(16384)
    _execute(runs, b, mem)
    assert mem[:8192] == b"A" * 8192


def test_flush_is_a_barrier():
    b = _batch(Write(4096, b"x" * 4096), Flush(), Write(0, b"y" * 4096), Flush(), Flush())
    runs = plan(b)
    assert [type(r) for r in runs] == [WriteRun, FlushRun, WriteRun, FlushRun]
    assert runs[1].members == [1]
    assert runs[3].members == [3, 4]  # consecutive flushes: one fdatasync


def test_read_is_not_moved_across_a_write():
    b = _batch(Read(0, 4096), Write(0, b"n" * 4096), Read(0, 4096))
    runs = plan(b)
    assert [type(r) for r in runs] == [ReadRun, WriteRun, ReadRun]
    mem = bytearray(b"o" * 8192)
    replies = _execute(runs, b, mem)
    assert replies[0] == b"o" * 4096 and replies[2] == b"n" * 4096


def test_limits_cap_a_run():
    b = _batch(*(Write(i * 512, b"z" * 512) for i in range(10)))
    runs = plan(b, max_segments=4)
    assert [len(r.members) for r in runs] == [4, 4, 2]
    runs = plan(b, max_bytes=2048)
    assert [r.length for r in runs] == [2048, 2048, 1024]


_SIZE = 16 * 512


@st.composite
def _requests(draw):
    n = draw(st.integers(1, 30))
    out = []
    for _ in range(n):
        kind = draw(st.sampled_from(["r", "w", "w", "f", "d"]))
        if kind == "f":
            out.append(Flush())
            continue
        off = draw(st.integers(0, 15)) * 512
        length = draw(st.integers(1, (_SIZE - off) // 512)) * 512
        if kind == "r":
            out.append(Read(off, length))
        elif kind == "d":
            out.append(Discard(off, length))
        else:
            out.append(Write(off, bytes([draw(st.integers(1, 255))]) * length))
    return out


@settings(max_examples=300, deadline=None)
@given(_requests(), st.integers(1, 4), st.sampled_from([512, 2048, 1 << 20]))
def test_plan_equals_sequential_execution(msgs, segs, max_bytes):
    """Whatever the planner merges or sorts, the outcome is that of arrival order."""
    batch = _batch(*msgs)
    runs = plan(batch, max_bytes=max_bytes, max_segments=segs)
    # every request appears in exactly one run
    seen = []
    for r in runs:
        if isinstance(r, FlushRun):
            seen += r.members
        else:
            seen += [idx for idx, _ in r.members]
    assert sorted(seen) == list(range(len(msgs)))
    # no write crosses a flush: runs keep flush positions
    flush_pos = [i for i, m in enumerate(msgs) if isinstance(m, Flush)]
    for fi in flush_pos:
        for r in runs:
            if isinstance(r, WriteRun | DiscardRun):
                idxs = [idx for idx, _ in r.members]
                assert all(i < fi for i in idxs) or all(i > fi for i in idxs)
    base = bytes(random.Random(len(msgs)).randbytes(_SIZE))
    a, b = bytearray(base), bytearray(base)
    assert _execute(runs, batch, a) == _sequential(batch, b)
    assert a == b


# ----------------------------------------------------------------- write log / crash


def _log():
    base = bytes(8 * SECTOR)
    log = WriteLog(base)
    log.entries += [
        LoggedWrite(0, b"a" * SECTOR),
        LoggedFlush(),
        LoggedWrite(SECTOR, b"b" * (3 * SECTOR)),
        LoggedWrite(0, b"c" * 10),
        LoggedFlush(),
        LoggedWrite(4 * SECTOR, b"d" * (4 * SECTOR)),
    ]
    return log


def test_image_at_every_prefix():
    log = _log()
    assert log.image_at(0) == bytes(8 * SECTOR)
    assert log.image_at(1)[:SECTOR] == b"a" * SECTOR
    img = log.image_at(4)
    assert img[:10] == b"c" * 10 and img[10:SECTOR] == b"a" * (SECTOR - 10)
    assert img[SECTOR : 4 * SECTOR] == b"b" * 3 * SECTOR
    assert log.image_at() == log.image_at(6)
    assert log.flush_points() == [2, 5]


def test_crash_keeps_durable_prefix_and_drops_unflushed():
    log = _log()
    durable, pending = log.unflushed_at(4)
    assert durable == 2 and [w.data[:1] for w in pending] == [b"b", b"c"]
    img, outcome = log.crash_image(4, keep=0.0)
    assert img == log.image_at(2)
    assert outcome.kept == () and outcome.dropped == (0, 1)
    img, outcome = log.crash_image(4, keep=1.0)
    assert img == log.image_at(4)


def test_crash_is_seeded_and_a_torn_write_lands_sector_wise():
    log = _log()
    seen_partial = False
    for seed in range(40):
        img, outcome = log.crash_image(6, keep=0.0, seed=seed, tear=True)
        again, outcome2 = log.crash_image(6, keep=0.0, seed=seed, tear=True)
        assert img == again and outcome == outcome2
        assert outcome.torn == 0  # the only unflushed write
        landed = set(outcome.torn_sectors)
        assert 0 < len(landed) < 4
        for s in range(4, 8):
            want = b"d" * SECTOR if s in landed else bytes(SECTOR)
            assert img[s * SECTOR : (s + 1) * SECTOR] == want
        assert img[: 4 * SECTOR] == log.image_at(5)[: 4 * SECTOR]
        seen_partial |= landed != {4}
    assert seen_partial


def test_crash_subset_is_a_subset_in_order():
    writes = [LoggedWrite(0, bytes([i + 1]) * SECTOR) for i in range(20)]
    outcome = choose_crash(writes, keep=0.5, seed=7)
    assert 0 < len(outcome.kept) < 20
    img = bytearray(SECTOR)
    apply_crash(img, writes, outcome)
    # later kept writes win over earlier ones on the same sector
    assert img == bytes([max(outcome.kept) + 1]) * SECTOR
