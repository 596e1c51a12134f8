"""The front end's request wait: one reader at a time, hand-over, polling, shutdown.

A socket pair stands in for ``/dev/fuse``: the wait only needs a descriptor that becomes
readable.
"""

from __future__ import annotations

import os
import socket

import pytest
import trio
import trio.testing
from chanos.compat import request_wait
from chanos.compat.request_wait import IdlePoll, RequestWait


@pytest.fixture
def pair():
    a, b = socket.socketpair()
    a.setblocking(False)
    yield a, b
    a.close()
    b.close()


ends: list[int] = []


async def _worker(wait: RequestWait, sock: socket.socket, got: list, inside: list) -> None:
    """One pyfuse3 worker: wait for the turn, read one request, serve it elsewhere."""
    while await wait.wait_readable():
        inside.append(1)
        assert len(inside) == 1, "two readers at once"
        data = sock.recv(1)
        inside.pop()
        if not data:
            ends.append(1)
            return
        got.append(data)
        await trio.sleep(0)  # serving the request lets the other workers take turns


@pytest.mark.parametrize("busy_poll", [0.0, 200e-6])
async def test_workers_share_the_reader_turn_and_every_request_is_read_once(pair, busy_poll):
    a, b = pair
    ends.clear()
    wait = RequestWait(a.fileno())
    if busy_poll:
        trio.lowlevel.add_instrument(IdlePoll(a.fileno(), busy_poll))
    got: list[bytes] = []
    inside: list[int] = []
    async with trio.open_nursery() as nursery:
        for _ in range(4):
            nursery.start_soon(_worker, wait, a, got, inside)
        for i in range(200):
            b.send(bytes([i % 250 + 1]))
            if i % 7 == 0:
                await trio.sleep(0.001)  # some arrive while every worker sleeps
        await trio.sleep(0.05)
        assert sorted(got) == sorted(bytes([i % 250 + 1]) for i in range(200))
        b.shutdown(socket.SHUT_RDWR)  # hang-up, as an unmount
    assert len(got) == 200
    # One worker read the end of the session; the others stopped without reading (a
    # read after the end can fail, and pyfuse3 would raise it).
    assert ends == [1]


async def test_a_queued_request_is_taken_without_sleeping(pair):
    a, b = pair
    b.send(b"x")
    wait = RequestWait(a.fileno())
    with trio.move_on_after(5) as scope:
        assert await wait.wait_readable()
    assert not scope.cancelled_caught


async def test_the_idle_poll_stops_for_a_threads_result(pair):
    """A poll of ten seconds must not hold up a task waiting for a thread."""
    a, _ = pair
    trio.lowlevel.add_instrument(IdlePoll(a.fileno(), 10.0))
    t0 = trio.current_time()
    await trio.to_thread.run_sync(lambda: None)
    assert trio.current_time() - t0 < 5


async def test_idle_poll_returns_once_the_descriptor_is_readable(pair):
    a, b = pair
    poll = IdlePoll(a.fileno(), 10.0)
    b.send(b"x")
    t0 = trio.current_time()
    poll.before_io_wait(10.0)
    assert trio.current_time() - t0 < 5
    poll.before_io_wait(0)  # runnable tasks: returns without polling


async def test_the_run_loop_view_sees_runnable_tasks_callbacks_and_timers():
    """What the waits read from trio's runner agrees with trio's own statistics."""
    loop = request_wait._RunLoop()

    def agrees(seconds: float) -> bool:
        stats = trio.lowlevel.current_statistics()
        idle = not (stats.tasks_runnable or stats.run_sync_soon_queue_size) and (
            stats.seconds_to_next_deadline > seconds
        )
        assert loop.idle_for(seconds) == idle
        assert loop.results_pending() == bool(stats.run_sync_soon_queue_size)
        return idle

    await trio.sleep(0.01)
    assert agrees(0.001)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.sleep, 0)
        assert not agrees(0.001)  # a task is runnable
    with trio.CancelScope(deadline=trio.current_time() + 0.5):
        assert not agrees(1.0)  # a timer falls due within the second
        assert agrees(0.001)
    trio.lowlevel.current_trio_token().run_sync_soon(lambda: None)
    assert not agrees(0.001)  # a callback waits, as a thread's result would
    assert loop.results_pending()
    await trio.sleep(0.01)
    assert agrees(0.001) and not loop.results_pending()


def test_fuse_fd_is_the_new_dev_fuse_descriptor(tmp_path):
    before = request_wait.fuse_fds()
    try:
        fd = os.open("/dev/fuse", os.O_RDWR)
    except OSError:
        pytest.skip("no /dev/fuse")
    try:
        assert request_wait.fuse_fd(before) == fd
        assert request_wait.fuse_fd(request_wait.fuse_fds()) is None
    finally:
        os.close(fd)


async def test_idle_workers_wake_last_in_first_out_so_few_buffers_stay_in_use():
    from chanos.compat.request_wait import _Stack

    stack = _Stack()
    woken: list[int] = []

    async def worker(i: int) -> None:
        await stack.wait()
        woken.append(i)

    async with trio.open_nursery() as nursery:
        for i in range(4):
            nursery.start_soon(worker, i)
            await trio.testing.wait_all_tasks_blocked()
        stack.wake_one()
        await trio.testing.wait_all_tasks_blocked()
        assert woken == [3]
        stack.wake_one()
        await trio.testing.wait_all_tasks_blocked()
        assert woken == [3, 2]
        nursery.cancel_scope.cancel()  # a cancelled waiter leaves the stack
    stack.wake_all()
    assert woken == [3, 2]


@pytest.mark.parametrize("end", [False, True])
async def test_closing_the_descriptor_ends_every_waiting_worker(pair, end):
    """pyfuse3.terminate() closes the descriptor for trio, which ends the worker asleep
    on it and, through it, the parked ones. On a second signal end() follows: it also
    stops the workers that come back later (they were serving)."""
    a, _ = pair
    wait = RequestWait(a.fileno())
    ended: list[bool] = []

    async def worker() -> None:
        ended.append(await wait.wait_readable())

    async with trio.open_nursery() as nursery:
        for _ in range(3):  # one sleeps on the descriptor, two park
            nursery.start_soon(worker)
        await trio.testing.wait_all_tasks_blocked()
        if end:
            wait.end()
        trio.lowlevel.notify_closing(a.fileno())
    assert ended == [False, False, False]
    if end:
        assert not await wait.wait_readable()


async def test_idle_work_runs_only_while_no_request_waits(pair):
    """Deferred work is done piece by piece while the descriptor is quiet, and a request
    that is waiting is taken before any more of it."""
    a, b = pair
    done: list[int] = []
    pieces = [1, 2, 3]

    async def idle_work() -> bool:
        if not pieces:
            return False
        done.append(pieces.pop(0))
        if len(done) == 1:
            b.send(b"x")  # a request arrives while the first piece runs
        return True

    wait = RequestWait(a.fileno(), 0.0, idle_work)
    with trio.fail_after(5):
        assert await wait.wait_readable()
        assert done == [1]  # the request went first; the rest waits
        assert a.recv(1) == b"x"
        b.send(b"y")
        assert await wait.wait_readable()
        assert done == [1]  # a queued request is taken without any work first
        assert a.recv(1) == b"y"
        with trio.move_on_after(0.2):
            await wait.wait_readable()  # nothing comes: the work is finished, then it sleeps
    assert done == [1, 2, 3]


class _Latency:
    """Records what the wait tells a WakeLatency."""

    def __init__(self) -> None:
        self.requests = 0
        self.bursts = 0

    def burst(self) -> None:
        self.bursts += 1


async def test_only_requests_found_without_sleeping_mark_a_burst(pair):
    a, b = pair
    lat = _Latency()
    wait = RequestWait(a.fileno(), busy_poll=0.0, latency=lat)  # type: ignore[arg-type]

    async def send_later() -> None:
        await trio.sleep(0.01)
        b.send(b"x")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(send_later)
        assert await wait.wait_readable()  # slept until it came: an isolated request
    a.recv(1)
    assert (lat.requests, lat.bursts) == (1, 0)
    b.send(b"yz")  # the next one is queued while the last is in hand: a burst
    assert await wait.wait_readable()
    assert (lat.requests, lat.bursts) == (2, 1)
    a.recv(2)
