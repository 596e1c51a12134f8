"""ImageFileDriver: a block device backed by an image file or a host block device.

The driver is one actor; its turns run inline in the caller's task while it is idle, so
the request path is short. Where time goes:

* Reads first try ``preadv(..., RWF_NOWAIT)`` right in the turn: a page-cache hit is
  served without any thread hop. A read that would block goes to a worker thread.
  Large reads reuse warm buffers once their earlier replies are gone (``BufferPool``).
* Writes are queued in the driver's write cache (like a disk's volatile cache) and
  acknowledged at once; the data is copied unless it is immutable (``bytes``, or a view
  of ``bytes``). A write of
  exactly the range of a queued one replaces it (its data is dropped at once). When the
  queue holds ``write_behind`` bytes or IOV_MAX requests it is *written out*: planned
  with ``chanos.drivers.queue.plan`` (adjacent writes merged into one ``pwritev``, sorted
  when they do not overlap, arrival order kept when they do). A write-out with a run of
  ``WRITEBACK_MIN`` (256 KiB) or more (file data) is handed to a worker thread in one
  piece. The driver does not wait for it: the worker's completion is its interrupt (a
  callback in the event loop records the outcome), and the driver meanwhile serves and
  queues more requests. One worker thread takes write-outs in order from its inbox, so
  writes reach the file in the order planned and back-to-back write-outs leave the thread
  no idle gap; at most two are outstanding, so the cache holds at most three times
  ``write_behind`` bytes.
* A write-out of smaller runs only (inode-table, bitmap and directory blocks, small
  files, random 4 KiB writes) is written within the turn that filled the cache, after
  the write-outs in flight if there are any (that turn waits for them, as a full cache
  would): each run is a ``pwritev`` of a few KiB into the host's page cache. From the
  worker, each of them cost the event loop a thread wake-up: the worker needs the
  interpreter lock back after every ``pwritev``, so every system call of the loop
  meanwhile (a page-cache read, a FUSE request or reply, trio's poll) waited for the
  lock (a cached 4 KiB ``preadv``: 16.5 µs instead of 0.6). A large run is one system
  call, and its copy into the page cache overlaps the loop's work. (A host short of clean
  memory can make even a small copy wait; the loop then waits with it.)
* A read overlapping the queue or the write-out in flight waits for that data to reach
  the file first (it then sees it); other reads pass.
* Flush writes the queue out, waits for it, then ``fdatasync`` (skipped when nothing was
  written since the last one). A write is durable once a flush issued after it has been
  answered; nothing queued after a flush is written before that flush's write-out.
* Discard writes the queue out, waits, then punches a hole (see ``image_io``).

Errors: a write that fails during a write-out has already been acknowledged. It is
published at once as an ``IOErrorEvent`` naming its range, and reported again by the next
flush (``EIO``, once, like a host kernel's fsync after a writeback error), so nothing
acknowledged is silently lost before a successful flush. ``write_behind=0`` turns the
cache off: every write then goes to the file within its own turn and its error (if any)
is that request's reply.

Blocking reads, flushes and discards use worker threads from the driver's own
``trio.CapacityLimiter`` of size 1: turns are serialized, so one of them is in a thread at
a time, and a private limiter means the driver never waits behind other users of trio's
shared thread pool. The write-out worker is one more thread, alive while write-outs are
outstanding.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections import deque
from queue import SimpleQueue
from typing import Any

import trio
from chanos.drivers.base import BlockDriver
from chanos.drivers.image_io import WRITEBACK_MIN, BufferPool, ImageFile
from chanos.drivers.protocol import Read, Write
from chanos.drivers.queue import IOV_MAX, DiscardRun, FlushRun, ReadRun, plan


class ImageFileDriver(BlockDriver):
    def __init__(
        self,
        path: str | os.PathLike[str],
        read_only: bool = False,
        block_size: int = 512,
        *,
        write_behind: int = 4 << 20,
        name: str | None = None,
    ) -> None:
        super().__init__(name or os.fspath(path), read_only)
        self.path = os.fspath(path)
        self.block_size = block_size
        self.write_behind = write_behind
        self.limiter = trio.CapacityLimiter(1)
        self.file: ImageFile | None = None
        # The write cache, in arrival order. A write of exactly the range of a queued one
        # supersedes it: the older entry becomes None and its data is let go (inode-table,
        # bitmap and directory blocks are rewritten many times between write-outs).
        self.queue: list[Write | None] = []
        self.latest: dict[tuple[int, int], int] = {}  # (offset, length) -> queue position
        self.live = 0  # entries of the queue not superseded
        self.queued_bytes = 0
        self.queue_lo = 0  # byte bounds of everything queued, for a quick overlap test
        self.queue_hi = 0
        # Write-outs handed to the worker thread, oldest first (it does them in order).
        self.outstanding: deque[_WriteOut] = deque()
        self.ring: SimpleQueue[_WriteOut | None] | None = None  # the worker's inbox
        self.deferred: list[OSError] = []  # write-out failures the next flush reports
        self.buffers = BufferPool()  # warm buffers for large reads served in the turn
        # Read-ahead hints being started by threads, and who waits for them to end.
        self.prefetching = 0
        self.prefetched = trio.Event()

    async def started(self) -> None:
        f = ImageFile(self.path, self.read_only, self.block_size)
        self.file = f
        self.size = f.size
        self.block_size = f.block_size

    async def stopped(self) -> None:
        f = self.file
        if f is None:
            return
        try:
            while self.prefetching:  # they use the descriptor about to be closed
                self.prefetched = trio.Event()
                await self.prefetched.wait()
            await self._reap()
            if self.removed is None:
                await self._settle()
                await self._thread(f.execute, [FlushRun([0])], [None])
        finally:
            f.close()
            self.file = None

    async def _thread(self, fn: Any, *args: Any) -> Any:
        return await trio.to_thread.run_sync(fn, *args, limiter=self.limiter)

    async def _execute(self, run: ReadRun | FlushRun | DiscardRun) -> Any:
        """Run one single-request run in a thread; its result, or raise its error."""
        f = self.file
        assert f is not None
        results: list[Any] = [None]
        await self._thread(f.execute, [run], results)
        r = results[0]
        if isinstance(r, OSError):
            raise r
        return r

    # ------------------------------------------------------------------ reads

    async def handle(self, msg: Any) -> Any:
        # A cached read is the commonest request of all: served right here, one coroutine
        # level and a few checks short of the generic path (which handles everything else,
        # including every refusal and error, the same way for all drivers).
        match msg:
            case Read():
                o, n = msg.offset, msg.length
                f = self.file
                if (
                    n > 0
                    and o >= 0
                    and o + n <= self.size
                    and self.removed is None
                    and f is not None
                    and f.nowait
                    and not self.queue
                    and not self.outstanding
                ):
                    buf = self.buffers.get(n)
                    try:
                        if os.preadv(f.fd, (buf,), o, os.RWF_NOWAIT) == n:
                            return memoryview(buf).toreadonly()
                    except OSError:
                        pass  # retried (and any error reported) by the generic path
        return await super().handle(msg)

    async def do_read(self, offset: int, length: int) -> memoryview:
        end = offset + length
        if self.queue or self.outstanding:  # a read elsewhere scans nothing (bounds first)
            cached = self._written(offset, end)
            if cached is not None:
                return cached
        if self.queue and offset < self.queue_hi and end > self.queue_lo:
            await self._settle()
        elif self.outstanding:
            for op in reversed(self.outstanding):
                if offset < op.hi and end > op.lo:
                    await op.done.wait()  # FIFO: the older ones are done as well
                    break
        f = self.file
        assert f is not None
        if f.nowait:
            # The hot path: a page-cache hit, served in this turn without a thread hop.
            buf = self.buffers.get(length)
            try:
                got = os.preadv(f.fd, (buf,), offset, os.RWF_NOWAIT)
            except BlockingIOError:
                got = -1
            except OSError as e:
                if e.errno in (errno.EOPNOTSUPP, errno.EINVAL):
                    f.nowait = False  # not supported here: always use the thread
                got = -1  # a real error is reported by the blocking retry
            if got == length:
                return memoryview(buf).toreadonly()
        return await self._execute(ReadRun(offset, length, [(0, length)]))

    def _written(self, offset: int, end: int) -> memoryview | None:
        """The bytes ``[offset, end)`` from the newest write not yet in the file that
        touches them, if it covers them all (nothing newer touches them, so they are what
        the file will hold); None if no such write covers them. A file system reads back
        what it has just written all the time (the partial last block of an appended
        file, a directory or inode-table block): this answers those without waiting for
        the write-out to reach the file."""
        if self.queue and offset < self.queue_hi and end > self.queue_lo:
            for w in reversed(self.queue):
                if w is not None and offset < w.offset + len(w.data) and end > w.offset:
                    return _slice(w, offset, end)
        for op in reversed(self.outstanding):
            if offset < op.hi and end > op.lo:
                for _, w in reversed(op.queue):
                    if offset < w.offset + len(w.data) and end > w.offset:
                        return _slice(w, offset, end)
        return None

    def do_prefetch(self, offset: int, length: int) -> None:
        """Have the host kernel read the range into its page cache, so the reads that
        follow are served in the turn (RWF_NOWAIT hits) instead of each waiting for the
        device in a thread, one at a time. ``posix_fadvise(WILLNEED)`` starts the reads
        without waiting for them but allocates the pages and queues the I/O itself, so it
        runs in a thread too; nobody waits for it. A hint beyond the few in flight is
        dropped (a sequential reader sends the next one soon)."""
        f = self.file
        if f is None or self.prefetching >= _MAX_PREFETCHING:
            return
        self.prefetching += 1
        token = trio.lowlevel.current_trio_token()

        def advise() -> None:
            # ``f`` is held here: its descriptor stays open until this is done.
            with contextlib.suppress(OSError):
                os.posix_fadvise(f.fd, offset, length, os.POSIX_FADV_WILLNEED)

        def done(_outcome: Any) -> None:
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(self._prefetch_done)

        trio.lowlevel.start_thread_soon(advise, done, name=f"prefetch {self.name}")

    def _prefetch_done(self) -> None:
        self.prefetching -= 1
        if not self.prefetching:
            self.prefetched.set()

    # ------------------------------------------------------------------ writes

    async def do_write(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        if type(data) is not bytes and not _immutable(data):
            data = bytes(data)  # the caller may reuse its buffer once answered
        n = len(data)
        if not self.queue:
            self.queue_lo, self.queue_hi = offset, offset + n
        else:
            self.queue_lo = min(self.queue_lo, offset)
            self.queue_hi = max(self.queue_hi, offset + n)
        # Dropping an older write that this one covers exactly is safe whatever lies between
        # them: every byte it would have written is written again later in the same order.
        key = (offset, n)
        pos = self.latest.get(key)
        if pos is not None:
            self.queue[pos] = None
            self.queued_bytes -= n
            self.live -= 1
        self.latest[key] = len(self.queue)
        self.queue.append(Write(offset, data))
        self.live += 1
        self.queued_bytes += n
        if self.write_behind <= 0:
            op = await self._write_out()
            assert op is not None
            await op.done.wait()
            if op.errors:  # answered here, so not reported again by the next flush
                for err in op.errors:
                    self.deferred.remove(err)
                raise _Reported(op.errors[0].errno or errno.EIO, op.errors[0].strerror)
        elif (
            self.queued_bytes >= self.write_behind
            or self.live >= IOV_MAX
            or len(self.queue) >= _MAX_QUEUE_SLOTS
        ):
            await self._write_out()

    async def _write_out(self) -> _WriteOut | None:
        """Write the queue out: small runs within this turn, a write-out with a large run
        handed to the worker thread without waiting for it (see the module docstring)."""
        if not self.queue:
            return None
        while len(self.outstanding) >= _MAX_OUTSTANDING:
            await self.outstanding[0].done.wait()
        live = [w for w in self.queue if w is not None]
        op = _WriteOut(list(enumerate(live)), self.queue_lo, self.queue_hi)
        self.queue = []
        self.latest = {}
        self.live = 0
        self.queued_bytes = 0
        small = all(r.length < WRITEBACK_MIN for r in op.runs)
        if small and self.outstanding:
            # Written after the write-outs in flight (they may cover the same bytes), and
            # then in this turn. Handed to the worker behind them instead, every write-out
            # that followed found the one before still in flight and went there too: 4 KiB
            # random writes after a sequential fill never came back to the loop's thread,
            # and each of their runs cost the loop a wait for the interpreter lock.
            await self.outstanding[-1].done.wait()
        if small and not self.outstanding:
            f = self.file
            assert f is not None
            try:
                f.execute(op.runs, op.results)
            except Exception as exc:  # execute() answers OSErrors itself: this is a bug
                op.results = [exc] * len(op.queue)
            self._record(op)
            return op
        self.outstanding.append(op)
        ring = self.ring
        if ring is None:
            ring = self.ring = SimpleQueue()
            self._start_worker(ring)
        ring.put(op)
        return op

    def _start_worker(self, ring: SimpleQueue[_WriteOut | None]) -> None:
        """One worker thread per burst of write-outs: it takes them from ``ring`` in order,
        so back-to-back write-outs run without a gap, and it is told to exit (``None``)
        when nothing is outstanding."""
        f = self.file
        assert f is not None
        token = trio.lowlevel.current_trio_token()
        completed = self._completed

        def worker() -> None:
            while True:
                op = ring.get()
                if op is None:
                    return
                try:
                    f.execute(op.runs, op.results)
                except BaseException as exc:  # execute() answers OSErrors itself
                    op.results = [exc] * len(op.queue)
                try:
                    token.run_sync_soon(completed, op)
                except trio.RunFinishedError:
                    return

        trio.lowlevel.start_thread_soon(worker, lambda _: None, name=f"write-out {self.name}")

    def _completed(self, op: _WriteOut) -> None:
        """A write-out's interrupt: runs in the event loop when the worker is done with it."""
        if self.outstanding and self.outstanding[0] is op:
            self.outstanding.popleft()
        self._record(op)
        if not self.outstanding and self.ring is not None:
            self.ring.put(None)
            self.ring = None

    def _record(self, op: _WriteOut) -> None:
        """Publish a finished write-out's failures and keep them for the next flush."""
        for idx, w in op.queue:
            r = op.results[idx]
            if isinstance(r, BaseException):
                code = r.errno if isinstance(r, OSError) and r.errno else errno.EIO
                err = OSError(
                    code,
                    f"{self.name}: write of {len(w.data)} bytes at {w.offset} failed: "
                    f"{getattr(r, 'strerror', None) or r}",
                )
                op.errors.append(err)
                self.deferred.append(err)
                self._note_error("write", w.offset, len(w.data), err)
        op.done.set()

    async def _reap(self) -> None:
        """Wait for every write-out handed to the worker."""
        if self.outstanding:
            await self.outstanding[-1].done.wait()

    async def _settle(self) -> None:
        """Everything queued so far is in the file (or has failed)."""
        await self._write_out()
        await self._reap()

    async def do_flush(self) -> None:
        await self._settle()
        f = self.file
        assert f is not None
        if f.dirty:
            await self._execute(FlushRun([0]))
        if self.deferred:
            first, n = self.deferred[0], len(self.deferred)
            self.deferred = []
            more = f" (and {n - 1} more)" if n > 1 else ""
            # Not published again: each failed write already had its IOErrorEvent.
            raise _Reported(first.errno or errno.EIO, f"{first.strerror}{more}")

    async def do_discard(self, offset: int, length: int) -> None:
        await self._settle()
        await self._execute(DiscardRun(offset, length, [(0, length)]))

    def _note_error(self, op: str, offset: int, length: int, err: OSError) -> None:
        if isinstance(err, _Reported):
            return
        super()._note_error(op, offset, length, err)


def _slice(w: Write, offset: int, end: int) -> memoryview | None:
    """``w``'s bytes for ``[offset, end)`` if it covers the whole range, else None."""
    if w.offset <= offset and end <= w.offset + len(w.data):
        return memoryview(w.data)[offset - w.offset : end - w.offset].toreadonly()
    return None


def _immutable(data: bytes | bytearray | memoryview) -> bool:
    """A view nobody can change: a contiguous slice of a ``bytes`` object (the file system
    passes slices of a 1 MiB WRITE payload; copying them would cost a megabyte each)."""
    return type(data) is memoryview and type(data.obj) is bytes and data.contiguous


_MAX_PREFETCHING = 2  # read-ahead hints being started at once
_MAX_OUTSTANDING = 2  # one being written, one waiting: the worker never idles between them
_MAX_QUEUE_SLOTS = 4 * IOV_MAX  # superseded entries included: the list stays short


class _WriteOut:
    """One write-out: its requests, their byte bounds, the planned runs, results."""

    __slots__ = ("done", "errors", "hi", "lo", "queue", "results", "runs")

    def __init__(self, queue: list[tuple[int, Write]], lo: int, hi: int) -> None:
        self.queue = queue
        self.runs = plan(queue)
        self.lo = lo
        self.hi = hi
        self.results: list[Any] = [None] * len(queue)
        self.errors: list[OSError] = []
        self.done = trio.Event()


class _Reported(OSError):
    """An error whose event was published when it happened (a deferred write failure)."""
