"""Blocking I/O on an image file or block device: the "hardware" behind ImageFileDriver.

Everything here is plain synchronous code over one file descriptor. The driver actor
decides where it runs (reads first try ``preadv(..., RWF_NOWAIT)`` in the actor's turn;
whatever would block, and all writes, flushes and discards, run in worker threads).
``execute`` runs a list of planned runs (see ``chanos.drivers.queue``) in order and
stores one result per request (its data, ``None``, or the ``OSError``) into ``results``
at the request's index.

A merged run that fails is retried request by request, so an error lands only on the
requests that really failed and their neighbours still complete.

Discard punches a hole (``fallocate(FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE)`` through
ctypes; on block devices the kernel turns this into a zero-out/discard). Where the file
system does not support hole punching the range is overwritten with zeros instead:
``os.posix_fallocate`` only ever allocates, so it cannot discard.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import stat
import sys
from typing import Any

from chanos.drivers.queue import DiscardRun, FlushRun, ReadRun, Run, WriteRun

FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
_BLKSSZGET = 0x1268  # logical sector size of a block device (int)
_ZERO_CHUNK = 1 << 20
SYNC_FILE_RANGE_WRITE = 2
# A written run at least this long is handed to the host's writeback at once: large
# writes are file data, which a flush will want on the medium, and the host would
# otherwise keep it dirty (up to its dirty limits: gigabytes) until that flush writes all
# of it while the caller waits.
WRITEBACK_MIN = 256 << 10

_libc: Any = None

# bytearray(n) zero-fills, which for a 128 KiB read costs about as much as the copy from
# the page cache; the C API's PyByteArray_FromStringAndSize(NULL, n) does not. Such a
# buffer is only handed out after a read filled every byte of it.
_uninit = ctypes.pythonapi.PyByteArray_FromStringAndSize
_uninit.restype = ctypes.py_object
_uninit.argtypes = [ctypes.c_void_p, ctypes.c_ssize_t]
_UNINIT_MIN = 16 * 1024  # below this, zeroing is cheaper than the foreign call


def read_buffer(n: int) -> bytearray:
    """A fresh ``n``-byte buffer to read into (contents undefined until filled)."""
    return _uninit(None, n) if n >= _UNINIT_MIN else bytearray(n)


class BufferPool:
    """Large read buffers, reused once nobody else holds them.

    A fresh 128 KiB buffer costs page faults on first touch (about a fifth of the read
    itself); a buffer the kernel has just filled is warm. A reply is a memoryview of its
    buffer, and every view (slices, ``toreadonly()``, any buffer-protocol consumer) keeps
    a strong reference to the buffer; so when the pool's own references are the only ones
    left, no reply can still see it and it can be refilled. Only for reads served in the
    actor's turn (the event loop's thread), never from worker threads.
    """

    MIN = 64 * 1024  # smaller buffers are cheap to allocate
    # Replies are consumed before the next read is served (reads run one at a time in
    # the actor's turn), so two per size are enough; the pool's memory is held for the
    # driver's lifetime, hence the small total.
    PER_SIZE = 2
    MAX_BYTES = 4 << 20

    def __init__(self) -> None:
        self.free: dict[int, list[bytearray]] = {}
        self.total = 0

    def get(self, n: int) -> bytearray:
        if n < self.MIN:
            return bytearray(n)
        bufs = self.free.get(n)
        if bufs is None:
            bufs = self.free[n] = []
        for b in bufs:
            # references: the list, the loop variable, getrefcount's argument
            if _refcount(b) == 3:
                return b
        b = _uninit(None, n)
        if len(bufs) < self.PER_SIZE and self.total + n <= self.MAX_BYTES:
            bufs.append(b)
            self.total += n
        return b


_refcount = sys.getrefcount


def _c() -> Any:
    global _libc
    if _libc is None:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
        libc.fallocate.restype = ctypes.c_int
        libc.sync_file_range.argtypes = [
            ctypes.c_int,
            ctypes.c_int64,
            ctypes.c_int64,
            ctypes.c_uint,
        ]
        libc.sync_file_range.restype = ctypes.c_int
        _libc = libc
    return _libc


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Have the host kernel start writing a range back to the medium, without waiting for
    it (``sync_file_range(SYNC_FILE_RANGE_WRITE)``); errors are left to the next flush."""
    _c().sync_file_range(fd, offset, length, SYNC_FILE_RANGE_WRITE)


def _fallocate(fd: int, mode: int, offset: int, length: int) -> None:
    if _c().fallocate(fd, mode, offset, length) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"fallocate(punch hole) at {offset}+{length}: {os.strerror(e)}")


def _advance(views: list[memoryview], n: int) -> list[memoryview]:
    """The buffers left after the first ``n`` bytes of ``views`` were transferred."""
    out = []
    for v in views:
        if n >= len(v):
            n -= len(v)
            continue
        out.append(v[n:] if n else v)
        n = 0
    return out


def preadv_full(fd: int, views: list[memoryview], offset: int) -> int:
    """Fill ``views`` from ``offset``; returns bytes read (short only at end of file)."""
    total = 0
    want = sum(len(v) for v in views)
    while views:
        n = os.preadv(fd, views, offset + total)
        if n == 0:
            break
        total += n
        if total == want:
            break
        views = _advance(views, n)
    return total


def pwritev_full(fd: int, views: list[memoryview], offset: int) -> None:
    total = 0
    want = sum(len(v) for v in views)
    while total < want:
        n = os.pwritev(fd, views, offset + total)
        if n <= 0:
            raise OSError(errno.EIO, f"write at {offset + total} made no progress")
        total += n
        views = _advance(views, n)


class ImageFile:
    """An open image file or block device; the synchronous half of ImageFileDriver."""

    def __init__(
        self, path: str | os.PathLike[str], read_only: bool = False, block_size: int = 512
    ):
        self.path = os.fspath(path)
        if block_size <= 0 or block_size & (block_size - 1):
            raise ValueError(f"block size must be a positive power of two, not {block_size}")
        flags = (os.O_RDONLY if read_only else os.O_RDWR) | os.O_CLOEXEC
        try:
            fd = os.open(self.path, flags)
        except FileNotFoundError:
            raise OSError(
                errno.ENOENT, f"cannot open device image {self.path!r}: no such file"
            ) from None
        except PermissionError as e:
            mode = "reading" if read_only else "reading and writing"
            hint = "" if read_only else " (open it read-only if it is only readable)"
            raise OSError(
                e.errno,
                f"cannot open device image {self.path!r} for {mode}: permission denied{hint}",
            ) from None
        except IsADirectoryError:
            raise OSError(
                errno.EISDIR, f"cannot use {self.path!r} as a device image: it is a directory"
            ) from None
        except OSError as e:
            raise OSError(
                e.errno, f"cannot open device image {self.path!r}: {os.strerror(e.errno or 0)}"
            ) from None
        try:
            st = os.fstat(fd)
            self.is_block_device = stat.S_ISBLK(st.st_mode)
            if not (self.is_block_device or stat.S_ISREG(st.st_mode)):
                raise OSError(
                    errno.ENOTBLK,
                    f"cannot use {self.path!r} as a device image: "
                    "not a regular file or block device",
                )
            if self.is_block_device:
                import fcntl
                import struct

                raw = fcntl.ioctl(fd, _BLKSSZGET, b"\0\0\0\0")
                block_size = max(block_size, struct.unpack("i", raw)[0])
            size = os.lseek(fd, 0, os.SEEK_END)
            if size == 0:
                raise OSError(errno.EINVAL, f"device image {self.path!r} is empty (size 0)")
            if size % block_size:
                raise OSError(
                    errno.EINVAL,
                    f"device image {self.path!r} has size {size} bytes, which is not a whole "
                    f"number of {block_size}-byte blocks ({size % block_size} bytes over)",
                )
        except BaseException:
            os.close(fd)
            raise
        self.fd = fd
        self.size = size
        self.block_size = block_size
        self.read_only = read_only
        self.nowait = True  # cleared if the file system refuses RWF_NOWAIT
        self.punch = True  # cleared if the file system cannot punch holes
        self.dirty = False  # a write completed since the last successful fdatasync

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __del__(self) -> None:
        # A driver taken down without stopped() (its supervisor left on an exception)
        # never closes its file; the descriptor goes when the last user lets go of it
        # (a write-out thread still running holds a reference).
        if getattr(self, "fd", -1) >= 0:
            os.close(self.fd)
            self.fd = -1

    # ------------------------------------------------------------ reads

    def _read(self, run: ReadRun, results: list[Any]) -> None:
        bufs = [read_buffer(n) for _, n in run.members]
        try:
            got = preadv_full(self.fd, [memoryview(b) for b in bufs], run.offset)
            if got != run.length:
                raise OSError(
                    errno.EIO,
                    f"short read at {run.offset}: {got} of {run.length} bytes "
                    f"(was {self.path!r} truncated?)",
                )
        except OSError as e:
            self._failed(run, results, e)
            return
        for (idx, _), buf in zip(run.members, bufs, strict=True):
            results[idx] = memoryview(buf).toreadonly()

    # ------------------------------------------------------------ writes

    def _write(self, run: WriteRun, results: list[Any]) -> None:
        try:
            pwritev_full(self.fd, [v for _, v in run.members], run.offset)
        except OSError as e:
            self._failed(run, results, e)
            return
        if run.length >= WRITEBACK_MIN:
            start_writeback(self.fd, run.offset, run.length)
        self.dirty = True
        for idx, _ in run.members:
            results[idx] = None

    def _flush(self, run: FlushRun, results: list[Any]) -> None:
        res: OSError | None = None
        if self.dirty:
            # Cleared before the call: a write racing in afterwards keeps it set again.
            self.dirty = False
            try:
                os.fdatasync(self.fd)
            except OSError as e:
                self.dirty = True
                res = e
        for idx in run.members:
            results[idx] = res

    def _discard(self, run: DiscardRun, results: list[Any]) -> None:
        try:
            self._discard_range(run.offset, run.length)
        except OSError as e:
            self._failed(run, results, e)
            return
        self.dirty = True
        for idx, _ in run.members:
            results[idx] = None

    def _discard_range(self, offset: int, length: int) -> None:
        if self.punch:
            try:
                _fallocate(self.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length)
                return
            except OSError as e:
                if e.errno not in (errno.EOPNOTSUPP, errno.ENOSYS):
                    raise
                self.punch = False
        zeros = memoryview(bytes(min(length, _ZERO_CHUNK)))
        pos, end = offset, offset + length
        while pos < end:
            n = min(end - pos, len(zeros))
            pwritev_full(self.fd, [zeros[:n]], pos)
            pos += n

    def _failed(self, run: ReadRun | WriteRun | DiscardRun, results: list[Any], e: OSError) -> None:
        """A run failed with ``e``: a merged run is retried one request at a time (only the
        requests that fail again get an error), a single request gets ``e``."""
        if len(run.members) > 1:
            self._split(run, results)
        else:
            results[run.members[0][0]] = e

    def _split(self, run: ReadRun | WriteRun | DiscardRun, results: list[Any]) -> None:
        """Retry a failed merged run one request at a time."""
        pos = run.offset
        for idx, item in run.members:
            match run:
                case ReadRun():
                    self._read(ReadRun(pos, item, [(idx, item)]), results)
                    pos += item
                case WriteRun():
                    self._write(WriteRun(pos, len(item), [(idx, item)]), results)
                    pos += len(item)
                case DiscardRun():
                    self._discard(DiscardRun(pos, item, [(idx, item)]), results)
                    pos += item

    # ------------------------------------------------------------ plans

    def execute(self, runs: list[Run], results: list[Any]) -> None:
        """Run ``runs`` in order (blocking); one result per request into ``results``."""
        for run in runs:
            match run:
                case ReadRun():
                    self._read(run, results)
                case WriteRun():
                    self._write(run, results)
                case FlushRun():
                    self._flush(run, results)
                case DiscardRun():
                    self._discard(run, results)
