"""How the front end waits for the next FUSE request: polling briefly before sleeping,
with one worker at a time asleep on the descriptor.

pyfuse3's session loop runs several worker tasks; each waits until ``/dev/fuse`` is
readable, reads one request and serves it. pyfuse3 makes that wait with a ``trio.Lock``
and ``trio.lowlevel.wait_readable``. Measured on an empty pyfuse3 file system
(``bench/fuse_floor.py``), a round trip then costs about 80 µs, more than twice fuse2fs's
whole request, and most of it is not serving: the lock's checkpoint is a scheduler pass,
every wait re-arms the descriptor in epoll and parks the task, the next worker has to be
woken to take over the watch, and the daemon sleeps in ``epoll_wait`` between two
requests, so each request pays a wake-up of the daemon's CPU (in a virtual machine, an
interrupt to a halted virtual CPU) and a context switch.

* :class:`RequestWait` replaces pyfuse3's wait (:func:`installed`). A worker takes a
  queued request at once. Otherwise, when nothing else in the daemon can run, it polls
  the descriptor for up to ``busy_poll`` seconds: a program issuing system calls back to
  back sends its next request a few microseconds after the last answer, so the worker
  that answered takes the next request itself, without the run loop, epoll or another
  worker. This is the trade the host kernel makes with ``net.core.busy_poll`` for
  sockets: a bounded amount of CPU for a shorter round trip. One worker sleeps in epoll
  on the descriptor all along, so a request arriving while the others are blocked (on
  the image, say) is still taken; the rest park. Before it polls, a worker with no
  request to take does the front end's deferred work (``idle_work``: forgets, which
  have no reply), one piece at a time, looking for a request between two pieces. A
  request found without sleeping (it came while the previous one was in hand, or
  during the poll) marks a burst for ``latency`` (``chanos.compat.wake_latency``), which
  then keeps idle CPUs quick to wake, so the program gets its answer sooner.
* :class:`IdlePoll` is a trio instrument with the same poll for the moment the whole run
  loop is about to sleep with only that sleeper watching.

A poll stops at the next timer, and once a thread hands the run loop a result. It starts
only when no task is runnable and no ``trio.to_thread`` call (the image driver's reads)
is in progress; tasks in the run loop's current batch are not visible to it and may wait
up to one poll.

``_wait_fuse_readable`` is not public pyfuse3 API. :func:`installed` checks that it is
there and leaves pyfuse3's own wait in place when it is not; the idle poll works either
way.
"""

from __future__ import annotations

import logging
import os
import select
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import trio

if TYPE_CHECKING:
    from chanos.compat.init_reply import InitReply
    from chanos.compat.wake_latency import WakeLatency

log = logging.getLogger(__name__)

# Longest stretch (seconds) of requests taken without passing through the run loop.
_MAX_WITHOUT_CHECKPOINT = 0.001


_ENDED = select.POLLERR | select.POLLHUP | select.POLLNVAL


class _RunLoop:
    """What the waits need to know of trio's run loop, read from the runner itself.

    ``trio.lowlevel.current_statistics()`` answers the same questions but builds two
    statistics objects and asks the I/O backend for its own each time: 1.7 µs, seven
    polls' worth, so a request arriving during a look waited that long for the poll to
    see it. Reading the runner's queues costs a few attribute loads. Built inside the
    trio run; if this trio's runner has other names, the public statistics are used.
    """

    __slots__ = ("_callbacks", "_next_deadline", "_now", "_runq")

    def __init__(self) -> None:
        self._runq = None
        try:
            from trio._core._run import GLOBAL_RUN_CONTEXT

            runner = GLOBAL_RUN_CONTEXT.runner
            entries = runner.entry_queue
            # The queues live as long as the run (trio empties them, never replaces them).
            callbacks = (entries.queue, entries.idempotent_queue)
            next_deadline, now = runner.deadlines.next_deadline, runner.clock.current_time
            runq = runner.runq
        except (ImportError, AttributeError):  # pragma: no cover - depends on the trio version
            return
        self._callbacks = callbacks
        self._next_deadline, self._now = next_deadline, now
        self._runq = runq

    def results_pending(self) -> bool:
        """Whether a thread has handed the run loop a result (or any callback)."""
        if self._runq is None:  # pragma: no cover - depends on the trio version
            return bool(trio.lowlevel.current_statistics().run_sync_soon_queue_size)
        plain, idempotent = self._callbacks
        return bool(plain or idempotent)

    def idle_for(self, seconds: float) -> bool:
        """Whether no task is runnable, no callback waits and no timer falls due within
        ``seconds``."""
        if self._runq is None:  # pragma: no cover - depends on the trio version
            stats = trio.lowlevel.current_statistics()
            return not (stats.tasks_runnable or stats.run_sync_soon_queue_size) and (
                stats.seconds_to_next_deadline > seconds
            )
        plain, idempotent = self._callbacks
        if self._runq or plain or idempotent:
            return False
        return self._next_deadline() - self._now() > seconds


def _spin(poll: Callable[[int], list], limit: float, loop: _RunLoop) -> bool:
    """Poll for up to ``limit`` seconds: True as soon as the descriptor is ready.

    Gives up as soon as a thread has handed the run loop a result: the task waiting for
    it should not wait for the poll. (The thread only gets the GIL between two polls, so
    it may wait a few of them.)
    """
    pending = loop.results_pending
    clock = time.perf_counter
    end = clock() + limit
    while True:
        if poll(0):
            return True
        if pending() or clock() >= end:
            return False


try:
    # What trio.testing.active_thread_count answers; importing trio.testing for it would
    # cost the daemon 9 MiB.
    from trio._threads import active_thread_count as _active_thread_count
except ImportError:  # pragma: no cover - depends on the trio version
    _active_thread_count = None


def _threads_running() -> bool:
    """Whether a ``trio.to_thread`` call is in progress (the image driver's reads, among
    others). A poll then only delays the thread's result: the thread needs the GIL to
    hand it over, and the polling task rarely lets go of it long enough. Measured on a
    4 KiB pread in a thread: 150 µs without the poll, 175 with it."""
    return _active_thread_count is not None and _active_thread_count() > 0


class _Stack:
    """Parked tasks, woken last in, first out.

    Each pyfuse3 worker keeps its own receive buffer of up to 1 MiB once it has read a
    large request. Waking the worker that waited least keeps the same few workers, and
    their buffers, in use; a first-in-first-out lot would rotate through all of them and
    touch every buffer (+6 to 8 MiB of peak RSS under writes).
    """

    def __init__(self) -> None:
        self._tasks: list[trio.lowlevel.Task] = []

    async def wait(self) -> None:
        task = trio.lowlevel.current_task()
        self._tasks.append(task)

        def abort(_: object) -> trio.lowlevel.Abort:
            self._tasks.remove(task)
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)

    def wake_one(self) -> None:
        if self._tasks:
            trio.lowlevel.reschedule(self._tasks.pop())

    def wake_all(self) -> None:
        while self._tasks:
            trio.lowlevel.reschedule(self._tasks.pop())


class RequestWait:
    """How pyfuse3's workers wait for ``/dev/fuse`` (see the module).

    A worker takes a queued request at once. Otherwise it runs ``idle_work`` (the front
    end's deferred work, one piece per call, False when there is none) and looks again;
    then, if nothing else in the daemon is runnable, it polls for up to ``busy_poll``
    seconds; then it becomes the one worker that sleeps in trio's epoll on the
    descriptor, or, if another already does, parks until that one wakes. The sleeper
    stays registered while other workers take requests by polling, so a worker whose
    request blocks (on the image, say) never leaves the descriptor unwatched.
    ``latency`` (optional) counts every request taken and hears of each one taken
    without sleeping (``WakeLatency.burst``).
    """

    def __init__(
        self,
        fd: int,
        busy_poll: float = 0.0,
        idle_work: Callable[[], Awaitable[bool]] | None = None,
        latency: WakeLatency | None = None,
    ) -> None:
        self.fd = fd
        self.busy_poll = busy_poll
        self.idle_work = idle_work
        self.latency = latency
        self._poll = select.poll()
        self._poll.register(fd, select.POLLIN)
        self._sleeping = False  # a worker waits in trio.lowlevel.wait_readable
        self._idle = _Stack()  # the other waiting workers
        self._ended = False
        self._last_checkpoint = 0.0
        self._loop: _RunLoop | None = None  # made in the trio run, at the first wait
        # Set while libfuse answers INIT through a stand-in descriptor (InitReply).
        self.init_reply: InitReply | None = None

    async def wait_readable(self) -> bool:
        """Wait until a request can be read: True, or False when the session is over.

        pyfuse3 reads right after a True, before anything else runs, so the request seen
        here is still there for that read.
        """
        init = self.init_reply
        if init is not None and init.complete():
            self.init_reply = None
        slept = False
        while not self._ended:
            ready = self._poll.poll(0)
            if ready:
                if ready[0][1] & _ENDED:
                    # Unmounted or aborted: this worker reads once more and gets the end
                    # of the session from libfuse; every other one stops without reading
                    # (a read after the session ended can fail, ECONNABORTED, and
                    # pyfuse3 would raise it), as pyfuse3's own wait stops them.
                    self.end()
                    return True
                latency = self.latency
                if latency is not None:
                    latency.requests += 1
                    if not slept:
                        latency.burst()  # it came while the last one was in hand
                # Requests served back to back might never let the run loop look at
                # its other tasks if no handler blocked: give them a turn now and then.
                now = time.perf_counter()
                if now - self._last_checkpoint <= _MAX_WITHOUT_CHECKPOINT:
                    return True
                self._last_checkpoint = now
                await trio.lowlevel.checkpoint()
                continue  # look again: another worker may have taken it meanwhile
            # No request waiting: do a piece of the front end's deferred work, then look
            # again (a request arriving meanwhile waits at most that piece).
            if self.idle_work is not None and await self.idle_work():
                continue
            if self._nothing_else_to_run() and _spin(self._poll.poll, self.busy_poll, self._loop):
                continue
            slept = True
            if self._sleeping:
                await self._idle.wait()
                continue
            self._sleeping = True
            try:
                await trio.lowlevel.wait_readable(self.fd)
            except trio.ClosedResourceError:
                self.end()  # pyfuse3.terminate(): this worker and every other one stops
            finally:
                self._sleeping = False
                self._last_checkpoint = time.perf_counter()
            # The request that woke this worker is its own; another worker takes over
            # the watch in case this one's request blocks.
            self._idle.wake_one()
        return False

    def end(self) -> None:
        """Stop serving: every waiting worker returns False, and so does every later
        wait. For ``pyfuse3.terminate()``, which only wakes a worker asleep on the
        descriptor, and there may be none at that moment."""
        self._ended = True
        self._idle.wake_all()

    def _nothing_else_to_run(self) -> bool:
        # Tasks in the current batch of the run loop are not counted: they may wait up
        # to one poll (busy_poll), as they would behind one more request.
        if self.busy_poll <= 0 or _threads_running():
            return False
        if self._loop is None:
            self._loop = _RunLoop()
        return self._loop.idle_for(self.busy_poll)


class IdlePoll(trio.abc.Instrument):
    """Polls ``/dev/fuse`` before the run loop sleeps (see the module)."""

    def __init__(self, fd: int, busy_poll: float) -> None:
        self.busy_poll = busy_poll
        self._poll = select.poll()
        self._poll.register(fd, select.POLLIN)
        self._loop: _RunLoop | None = None  # made in the trio run, at the first call

    def before_io_wait(self, timeout: float) -> None:
        # timeout is 0 when tasks are runnable (the loop only looks for events then),
        # else the time to the next timer.
        if timeout > 0 and not _threads_running():
            if self._loop is None:
                self._loop = _RunLoop()
            _spin(self._poll.poll, min(self.busy_poll, timeout), self._loop)


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


@contextmanager
def installed(
    fd: int,
    busy_poll: float,
    idle_work: Callable[[], Awaitable[bool]] | None = None,
    latency: WakeLatency | None = None,
) -> Iterator[RequestWait | None]:
    """Serve pyfuse3's session on ``fd`` with :class:`RequestWait` and :class:`IdlePoll`
    inside the block; yields the wait (None if this pyfuse3 has no hook for it).

    Enter after ``pyfuse3.init``, inside the trio run that calls ``pyfuse3.main``.
    ``busy_poll`` is in seconds; 0 installs no :class:`IdlePoll`. On leaving, pyfuse3's
    own wait is put back and the poll removed.
    """
    import pyfuse3

    idle = IdlePoll(fd, busy_poll) if busy_poll > 0 else None
    if idle is not None:
        trio.lowlevel.add_instrument(idle)
    original = getattr(pyfuse3, "_wait_fuse_readable", None)
    wait = None
    if original is None:
        log.warning("this pyfuse3 has no _wait_fuse_readable; its own request wait is used")
    else:
        wait = RequestWait(fd, busy_poll, idle_work, latency)
        pyfuse3._wait_fuse_readable = wait.wait_readable
    try:
        yield wait
    finally:
        if original is not None:
            pyfuse3._wait_fuse_readable = original
        if idle is not None:
            trio.lowlevel.remove_instrument(idle)
