"""How the front end waits for the next FUSE request: one reader at a time, and a
brief busy poll before the daemon sleeps.

pyfuse3's session loop runs several worker tasks; each waits until ``/dev/fuse`` is
readable, reads one request and serves it. pyfuse3 makes that wait with a ``trio.Lock``
and ``trio.lowlevel.wait_readable``. Measured on an empty pyfuse3 file system
(``bench/fuse_floor.py``), a round trip then costs about 80 µs, more than twice fuse2fs's
whole request, and most of it is not serving: the lock's checkpoint is a scheduler pass,
and the daemon sleeps in ``epoll_wait`` between two requests, so each request pays a
wake-up of the daemon's CPU (in a virtual machine, an interrupt to a halted virtual CPU)
and a context switch.

* :class:`RequestWait` replaces pyfuse3's wait (:func:`install`): the reader's turn is
  handed from worker to worker without a checkpoint, and a request already queued is
  taken at once.
* :class:`IdlePoll` is a trio instrument: when the run loop has nothing left to run and
  is about to sleep, it first polls ``/dev/fuse`` for up to ``busy_poll`` seconds. A
  program issuing system calls back to back sends its next request a few microseconds
  after the last answer, so the daemon is still awake to take it. This is the trade the
  host kernel makes with ``net.core.busy_poll`` for sockets: a bounded amount of CPU for
  a shorter round trip. It runs only when no task is runnable, stops at the next timer,
  and stops once a thread hands the run loop a result (such as the image driver's).

``_wait_fuse_readable`` is not public pyfuse3 API. :func:`install` checks that it is
there and leaves pyfuse3's own wait in place when it is not; the idle poll works either
way.
"""

from __future__ import annotations

import logging
import os
import select
import time
from collections.abc import Callable

import trio

log = logging.getLogger(__name__)

# Polls between two looks at trio's statistics (a look costs about four polls).
_POLLS_PER_LOOK = 4
# Longest stretch (seconds) of requests taken without passing through the run loop.
_MAX_WITHOUT_CHECKPOINT = 0.001


class RequestWait:
    """The single reader of ``/dev/fuse`` among pyfuse3's workers (see the module)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._poll = select.poll()
        self._poll.register(fd, select.POLLIN)
        self._reading = False  # a worker holds the reader's turn
        self._waiting = trio.lowlevel.ParkingLot()
        self._closed = False
        self._last_checkpoint = 0.0

    async def wait_readable(self) -> bool:
        """Wait until a request can be read: True, or False when the session is over."""
        if self._reading:
            await self._waiting.park()  # the turn is handed over, see _pass_turn
        else:
            self._reading = True
        try:
            if self._closed:
                return False
            if self._poll.poll(0):
                # Requests served back to back might never let the run loop look at
                # its other tasks if no handler blocked: give them a turn now and then.
                now = time.perf_counter()
                if now - self._last_checkpoint > _MAX_WITHOUT_CHECKPOINT:
                    self._last_checkpoint = now
                    await trio.lowlevel.checkpoint()
                return True
            await trio.lowlevel.wait_readable(self.fd)
            self._last_checkpoint = time.perf_counter()
            return True
        except trio.ClosedResourceError:
            # pyfuse3.terminate(): this worker and every one after it stops.
            self._closed = True
            return False
        finally:
            self._pass_turn()

    def _pass_turn(self) -> None:
        if self._waiting:
            self._waiting.unpark()
        else:
            self._reading = False


class IdlePoll(trio.abc.Instrument):
    """Polls ``/dev/fuse`` before the run loop sleeps (see the module)."""

    def __init__(self, fd: int, busy_poll: float) -> None:
        self.busy_poll = busy_poll
        self._poll = select.poll()
        self._poll.register(fd, select.POLLIN)

    def before_io_wait(self, timeout: float) -> None:
        # timeout is 0 when tasks are runnable (the loop only looks for events then),
        # else the time to the next timer.
        if timeout <= 0:
            return
        poll = self._poll.poll
        stats = trio.lowlevel.current_statistics
        end = time.perf_counter() + min(self.busy_poll, timeout)
        while True:
            for _ in range(_POLLS_PER_LOOK):
                if poll(0):
                    return
            # A thread's result waits for this poll to end: stop at once. (The thread
            # only gets the GIL between two polls, so it may wait a few of them.)
            if stats().run_sync_soon_queue_size or time.perf_counter() >= end:
                return


def fuse_fd(before: set[int]) -> int | None:
    """The one ``/dev/fuse`` descriptor opened since ``before`` (see :func:`fuse_fds`).

    pyfuse3 does not tell which descriptor its session reads.
    """
    found = fuse_fds() - before
    return found.pop() if len(found) == 1 else None


def fuse_fds() -> set[int]:
    """This process's open ``/dev/fuse`` descriptors."""
    found = set()
    for name in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{name}") == "/dev/fuse":
                found.add(int(name))
        except OSError:
            pass  # listdir's own descriptor, closed by now
    return found


def install(fd: int, busy_poll: float) -> Callable[[], None]:
    """Serve pyfuse3's session on ``fd`` with :class:`RequestWait` and :class:`IdlePoll`;
    returns the function that puts pyfuse3's wait back and removes the poll.

    Call after ``pyfuse3.init`` and inside the trio run that calls ``pyfuse3.main``.
    ``busy_poll`` is in seconds; 0 installs no :class:`IdlePoll`.
    """
    import pyfuse3

    idle = IdlePoll(fd, busy_poll) if busy_poll > 0 else None
    if idle is not None:
        trio.lowlevel.add_instrument(idle)
    original = getattr(pyfuse3, "_wait_fuse_readable", None)
    if original is None:
        log.warning("this pyfuse3 has no _wait_fuse_readable; its own request wait is used")
    else:
        pyfuse3._wait_fuse_readable = RequestWait(fd).wait_readable

    def uninstall() -> None:
        if original is not None:
            pyfuse3._wait_fuse_readable = original
        if idle is not None:
            trio.lowlevel.remove_instrument(idle)

    return uninstall
