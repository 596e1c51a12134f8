"""ImageFileDriver: a block device backed by an image file or a host block device.

The driver is one actor; its turns run inline in the caller's task while it is idle, so
the request path is short. Where time goes:

* Reads first try ``preadv(..., RWF_NOWAIT)`` right in the turn: a page-cache hit is
  served without any thread hop. A read that would block goes to a worker thread.
* Writes are queued in the driver's write cache (like a disk's volatile cache) and
  acknowledged at once; the data is copied unless it is immutable ``bytes``. The queue is
  written out when it holds ``write_behind`` bytes or IOV_MAX requests, before a read or
  discard that overlaps it, and on every flush. Writing out plans the queue with
  ``chanos.drivers.queue.plan`` (adjacent writes merged into one ``pwritev``, sorted when
  they do not overlap, arrival order kept when they do) and runs it in one worker-thread
  trip, so sequential writers pay one thread hop per few megabytes.
* Flush writes the queue out, then ``fdatasync`` (skipped when nothing was written since
  the last one). A write is durable once a flush issued after it has been answered;
  nothing queued after a flush is written before that flush's write-out.
* Discard writes the queue out, then punches a hole (see ``image_io``).

Errors: a write that fails while being written out was already acknowledged. It is
published at once as an ``IOErrorEvent`` naming its range, answered directly to the
caller if that caller's own write was being written out, and reported again by the next
flush (``EIO``, once, like a host kernel's fsync after a writeback error), so nothing
acknowledged is silently lost before a successful flush.

Worker threads come from the driver's own ``trio.CapacityLimiter`` of size 1: turns are
serialized, so one request is in a thread at a time, and a private limiter means the
driver never waits behind other users of trio's shared thread pool.

``write_behind=0`` turns the cache off: every write goes to the file in its own turn.
"""

from __future__ import annotations

import errno
import os
from typing import Any

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
        self.deferred: list[OSError] = []  # write-out failures the next flush reports
        self.syscalls = 0  # read/write system-call batches issued (for tests and benches)

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
            if self.removed is None:
                await self._write_out()
                await self._thread(f.execute, [FlushRun([0])], [None])
        finally:
            f.close()
            self.file = None

    async def _thread(self, fn: Any, *args: Any) -> Any:
        return await trio.to_thread.run_sync(fn, *args, limiter=self.limiter)

    # ------------------------------------------------------------------ reads

    async def do_read(self, offset: int, length: int) -> memoryview:
        if self.queue and offset < self.queue_hi and offset + length > self.queue_lo:
            await self._write_out()
        run = ReadRun(offset, length, [(0, length)])
        results: list[Any] = [None]
        f = self.file
        assert f is not None
        if not f.read_nowait(run, results):
            self.syscalls += 1
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
        mine = len(self.queue)
        self.queue.append((mine, Write(offset, data)))
        self.queued_bytes += n
        if self.queued_bytes >= self.write_behind or len(self.queue) >= IOV_MAX:
            await self._write_out(mine)

    async def _write_out(self, mine: int | None = None) -> None:
        """Write the whole queue to the file; raise only the error of request ``mine``."""
        queue = self.queue
        if not queue:
            return
        self.queue = []
        self.queued_bytes = 0
        f = self.file
        assert f is not None
        runs = plan(queue)
        results: list[Any] = [None] * len(queue)
        self.syscalls += 1
        await self._thread(f.execute, runs, results)
        own: OSError | None = None
        for idx, w in queue:
            r = results[idx]
            if isinstance(r, OSError):
                err = OSError(
                    r.errno or errno.EIO,
                    f"{self.name}: write of {len(w.data)} bytes at {w.offset} failed: "
                    f"{r.strerror or r}",
                )
                if idx == mine:
                    own = err  # answered to its caller, who publishes it
                else:
                    self.deferred.append(err)
                    self._note_error("write", w.offset, len(w.data), err)
        if own is not None:
            raise own

    async def do_flush(self) -> None:
        await self._write_out()
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
        if self.queue:
            await self._write_out()
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


class _Reported(OSError):
    """An error whose event was published when it happened (a deferred write failure)."""
