"""ImageFileDriver: a block device backed by an image file or a host block device.

The driver is one actor; its turns run inline in the caller's task while it is idle, so
the request path is short. Where time goes:

* Reads first try ``preadv(..., RWF_NOWAIT)`` right in the turn: a page-cache hit is
  served without any thread hop. A read that would block goes to a worker thread.
* Writes are queued in the driver's write cache (like a disk's volatile cache) and
  acknowledged at once; the data is copied unless it is immutable ``bytes``. When the
  queue holds ``write_behind`` bytes or IOV_MAX requests it is *written out*: planned
  with ``chanos.drivers.queue.plan`` (adjacent writes merged into one ``pwritev``, sorted
  when they do not overlap, arrival order kept when they do) and handed to a worker
  thread in one trip. The driver does not wait for that write-out: the thread's
  completion is its interrupt (a callback in the event loop records the outcome), and
  the driver meanwhile serves and queues more requests. At most one write-out is in
  flight; the next one waits for it, so writes reach the file in order and the cache
  holds at most twice ``write_behind`` bytes.
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
shared thread pool. The write-out in flight uses one more thread.
"""

from __future__ import annotations

import contextlib
import errno
import os
from typing import Any

import outcome as outcome_mod
import trio
from chanos.drivers.base import BlockDriver
from chanos.drivers.image_io import ImageFile
from chanos.drivers.protocol import Write
from chanos.drivers.queue import IOV_MAX, DiscardRun, FlushRun, ReadRun, plan


class ImageFileDriver(BlockDriver):
    def __init__(
        self,
        path: str | os.PathLike[str],
        read_only: bool = False,
        block_size: int = 512,
        *,
        write_behind: int = 8 << 20,
        name: str | None = None,
    ) -> None:
        super().__init__(name or os.fspath(path), read_only)
        self.path = os.fspath(path)
        self.block_size = block_size
        self.write_behind = write_behind
        self.limiter = trio.CapacityLimiter(1)
        self.file: ImageFile | None = None
        self.queue: list[tuple[int, Write]] = []  # the write cache, in arrival order
        self.queued_bytes = 0
        self.queue_lo = 0  # byte bounds of everything queued, for a quick overlap test
        self.queue_hi = 0
        self.inflight: _WriteOut | None = None  # the write-out the worker thread is doing
        self.deferred: list[OSError] = []  # write-out failures the next flush reports

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
            await self._reap()
            if self.removed is None:
                await self._settle()
                await self._thread(f.execute, [FlushRun([0])], [None])
        finally:
            f.close()
            self.file = None

    async def _thread(self, fn: Any, *args: Any) -> Any:
        return await trio.to_thread.run_sync(fn, *args, limiter=self.limiter)

    # ------------------------------------------------------------------ reads

    async def do_read(self, offset: int, length: int) -> memoryview:
        end = offset + length
        if self.queue and offset < self.queue_hi and end > self.queue_lo:
            await self._settle()
        elif (op := self.inflight) is not None and offset < op.hi and end > op.lo:
            await self._reap()
        f = self.file
        assert f is not None
        if f.nowait:
            # The hot path: a page-cache hit, served in this turn without a thread hop.
            buf = bytearray(length)
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
        run = ReadRun(offset, length, [(0, length)])
        results: list[Any] = [None]
        await self._thread(f.execute, [run], results)
        r = results[0]
        if isinstance(r, OSError):
            raise r
        return r

    # ------------------------------------------------------------------ writes

    async def do_write(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        if type(data) is not bytes:
            data = bytes(data)  # the caller may reuse its buffer once answered
        n = len(data)
        if not self.queue:
            self.queue_lo, self.queue_hi = offset, offset + n
        else:
            self.queue_lo = min(self.queue_lo, offset)
            self.queue_hi = max(self.queue_hi, offset + n)
        self.queue.append((len(self.queue), Write(offset, data)))
        self.queued_bytes += n
        if self.write_behind <= 0:
            await self._write_out()
            await self._reap(raise_own=True)
        elif self.queued_bytes >= self.write_behind or len(self.queue) >= IOV_MAX:
            await self._write_out()

    async def _write_out(self) -> None:
        """Start writing the queue to the file (after the write-out in flight, if any)."""
        if not self.queue:
            return
        if self.inflight is not None:
            await self._reap()
        queue = self.queue
        self.queue = []
        self.queued_bytes = 0
        f = self.file
        assert f is not None
        op = _WriteOut(queue, self.queue_lo, self.queue_hi)
        self.inflight = op
        token = trio.lowlevel.current_trio_token()

        def work() -> None:
            f.execute(plan(queue), op.results)

        def deliver(outcome: Any) -> None:  # in the worker thread
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(self._completed, op, outcome)

        trio.lowlevel.start_thread_soon(work, deliver, name=f"write-out {self.name}")

    def _completed(self, op: _WriteOut, outcome: Any) -> None:
        """The write-out's interrupt: runs in the event loop when the thread is done."""
        if isinstance(outcome, outcome_mod.Error):
            # execute() answers OSErrors per request; anything else is a bug: fail them all
            exc = outcome.error
            op.results = [exc] * len(op.queue)
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

    async def _reap(self, raise_own: bool = False) -> None:
        """Wait for the write-out in flight; with ``raise_own``, raise its first error (it
        then counts as answered, not deferred to the next flush)."""
        op = self.inflight
        if op is None:
            return
        await op.done.wait()
        if self.inflight is op:
            self.inflight = None
        if raise_own and op.errors:
            for err in op.errors:
                self.deferred.remove(err)
            raise _Reported(op.errors[0].errno or errno.EIO, op.errors[0].strerror)

    async def _settle(self) -> None:
        """Everything queued so far is in the file (or has failed)."""
        await self._write_out()
        await self._reap()

    async def do_flush(self) -> None:
        await self._settle()
        f = self.file
        assert f is not None
        if f.dirty:
            results: list[Any] = [None]
            await self._thread(f.execute, [FlushRun([0])], results)
            if isinstance(results[0], OSError):
                raise results[0]
        if self.deferred:
            first, n = self.deferred[0], len(self.deferred)
            self.deferred = []
            more = f" (and {n - 1} more)" if n > 1 else ""
            # Not published again: each failed write already had its IOErrorEvent.
            raise _Reported(first.errno or errno.EIO, f"{first.strerror}{more}")

    async def do_discard(self, offset: int, length: int) -> None:
        await self._settle()
        f = self.file
        assert f is not None
        results: list[Any] = [None]
        await self._thread(f.execute, [DiscardRun(offset, length, [(0, length)])], results)
        if isinstance(results[0], OSError):
            raise results[0]

    def _note_error(self, op: str, offset: int, length: int, err: OSError) -> None:
        if isinstance(err, _Reported):
            return
        super()._note_error(op, offset, length, err)


class _WriteOut:
    """One write-out in flight: its requests, their byte bounds, results, completion."""

    __slots__ = ("done", "errors", "hi", "lo", "queue", "results")

    def __init__(self, queue: list[tuple[int, Write]], lo: int, hi: int) -> None:
        self.queue = queue
        self.lo = lo
        self.hi = hi
        self.results: list[Any] = [None] * len(queue)
        self.errors: list[OSError] = []
        self.done = trio.Event()


class _Reported(OSError):
    """An error whose event was published when it happened (a deferred write failure)."""
