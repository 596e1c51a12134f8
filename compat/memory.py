"""The daemon's memory: glibc malloc settings, and allocation reports for finding where it goes.

Python hands every allocation above 512 bytes to glibc's malloc. Two glibc defaults make a
FUSE daemon that moves 1 MiB requests grow far beyond what it holds:

* The mmap threshold is dynamic: once a large block served by ``mmap`` is freed, the
  threshold rises to that block's size (up to 32 MiB), so from then on 1 MiB request
  buffers and write payloads come from the heap, where freed holes between live small
  objects are never given back. ``configure_malloc`` fixes the threshold (which also turns
  the dynamic adjustment off), so large blocks go straight back to the system when freed.
* Every thread that allocates gets its own arena (up to 8 per core), each keeping its own
  freed memory. The daemon's threads (trio's thread cache for blocking reads and syncs,
  the image driver's write-out thread) only do short bursts of work, so two arenas are
  enough.

``MemTrace`` (enabled with ``CHANOS_MEMTRACE=FILE``) runs ``tracemalloc`` and appends a
report of the largest allocation sites to FILE on ``SIGUSR1`` and at unmount; tracing
costs memory and time of its own, so it is for finding where memory goes, not for service.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import os
import signal
import time
from typing import Any

log = logging.getLogger("chanos.memory")

# mallopt(3) parameters (malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8

_libc: Any = None


def _c() -> Any:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or None)
        _libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        _libc.mallopt.restype = ctypes.c_int
        _libc.malloc_trim.argtypes = [ctypes.c_size_t]
        _libc.malloc_trim.restype = ctypes.c_int
    return _libc


def configure_malloc(
    *, arena_max: int = 2, mmap_threshold: int = 256 << 10, trim_threshold: int = 1 << 20
) -> bool:
    """Apply the daemon's malloc settings; False where the C library is not glibc."""
    try:
        libc = _c()
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    ok = True
    for param, value in (
        (M_ARENA_MAX, arena_max),
        (M_MMAP_THRESHOLD, mmap_threshold),
        (M_TRIM_THRESHOLD, trim_threshold),
    ):
        if value > 0 and mallopt(param, value) != 1:
            ok = False
    return ok


def trim() -> None:
    """Give the free memory at the top of every malloc arena back to the system."""
    with contextlib.suppress(OSError, AttributeError):
        _c().malloc_trim(0)


async def trim_periodically(interval: float = 5.0) -> None:
    """``malloc_trim`` every ``interval`` seconds: besides the top of the heap it returns
    every whole free page inside it (``MADV_DONTNEED``), which is what a burst of freed
    objects (retired vnodes, a finished copy's buffers) leaves behind. A pass over a heap
    of a few tens of MiB takes well under a millisecond."""
    import trio

    while True:
        await trio.sleep(interval)
        trim()


def rss_kib() -> dict[str, int]:
    """VmRSS and VmHWM of this process (KiB), from /proc."""
    out = {}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(("VmRSS", "VmHWM")):
                    key, value = line.split(":", 1)
                    out[key] = int(value.split()[0])
    except OSError:
        pass
    return out


class MemTrace:
    """tracemalloc reports appended to a file, on SIGUSR1 and at ``close()``."""

    def __init__(self, path: str, frames: int = 1, top: int = 30) -> None:
        import tracemalloc

        self.path = path
        self.top = top
        self.frames = frames
        tracemalloc.start(frames)
        self._old = signal.signal(signal.SIGUSR1, lambda *_: self.report("SIGUSR1"))

    @classmethod
    def from_env(cls) -> MemTrace | None:
        path = os.environ.get("CHANOS_MEMTRACE")
        if not path:
            return None
        frames = int(os.environ.get("CHANOS_MEMTRACE_FRAMES", "1") or 1)
        return cls(path, frames=max(frames, 1))

    def report(self, why: str) -> None:
        """Append the top allocation sites, the traced peak and the RSS to the file; the
        traced peak is reset, so each report covers the time since the previous one."""
        import tracemalloc

        if not tracemalloc.is_tracing():
            return
        snap = tracemalloc.take_snapshot().filter_traces(
            [tracemalloc.Filter(False, tracemalloc.__file__)]
        )
        current, peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        key = "traceback" if self.frames > 1 else "lineno"
        stats = snap.statistics(key)
        lines = [
            f"== {time.strftime('%H:%M:%S')} {why}: traced now {current >> 10} KiB, "
            f"peak since last report {peak >> 10} KiB, {rss_kib()}"
        ]
        for st in stats[: self.top]:
            # file:line only: formatting source lines would fill linecache, which is
            # then the report's own largest allocation
            where = " <- ".join(
                f"{fr.filename.rsplit('/', 2)[-1]}:{fr.lineno}" for fr in reversed(st.traceback)
            )
            lines.append(f"{st.size >> 10:>9} KiB {st.count:>8}  {where}")
        try:
            with open(self.path, "a") as f:
                f.write("\n".join(lines) + "\n")
        except OSError as exc:
            log.warning("cannot write the memory report to %s: %s", self.path, exc)

    def close(self) -> None:
        import tracemalloc

        self.report("unmount")
        signal.signal(signal.SIGUSR1, self._old)
        tracemalloc.stop()
