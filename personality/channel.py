"""Channels and `choose`: the message-passing primitives of the personality.

A `Channel` carries any value (channels and actor addresses included). Capacity 0 is a
rendezvous: a send completes only when a receiver takes the value. Capacity N buffers up to
N values. `close()` lets receivers drain the buffer, after which they see `EndOfChannel`;
sending on a closed channel raises `ChannelClosed`.

`choose` waits on any mix of receive and send options and runs exactly one of them. It is
built directly on trio's low-level scheduling API, after Go's runtime select: every
blocking operation (a plain send/receive is a one-option choose) registers a *waiter* on
each channel it waits on; the party that completes it (a partner send/receive or a close)
marks the waiter's *selection* done and reschedules its task with the outcome, all in one
synchronous step. Because trio runs one task at a time, that step is atomic: once a
selection is done no other waiter of it can fire, and a cancelled chooser has either
completed (its outcome already holds the value) or left no trace. Fairness: `choose` first
finds which options are ready, without side effects, then fires one of those picked
uniformly at random, so none starves.

Fast paths (the operation can complete at once) check for a pending cancellation but do not
pass through the scheduler; an operation that has to wait is a full checkpoint.
"""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

import trio
from outcome import Error as _Error
from outcome import Value as _Value
from trio.lowlevel import (
    Abort,
    checkpoint_if_cancelled,
    current_task,
    reschedule,
    wait_task_rescheduled,
)

from . import tracing as _tr

__all__ = [
    "Channel",
    "ChannelClosed",
    "EndOfChannel",
    "Recv",
    "Send",
    "WouldBlock",
    "choose",
]


_randrange = random.randrange


class ChannelClosed(Exception):
    """A send on a closed channel (or a channel closed while a send waited).

    `index` is the position of the failing option when raised from `choose`.
    """

    index: int | None = None


class EndOfChannel(Exception):
    """A receive on a closed channel whose buffer is drained.

    `index` is the position of the failing option when raised from `choose`.
    """

    index: int | None = None


class WouldBlock(Exception):
    """A `*_nowait` operation that cannot complete immediately."""


class _Selection:
    """One blocking operation of one task; `done` flips exactly once."""

    __slots__ = ("done", "task")

    def __init__(self, task: Any) -> None:
        self.task = task
        self.done = False


class _Waiter:
    """A selection's registration on one channel queue."""

    __slots__ = ("index", "sel", "value")

    def __init__(self, sel: _Selection, index: int, value: Any = None) -> None:
        self.sel = sel
        self.index = index
        self.value = value


def _fire(w: _Waiter, result: Any) -> None:
    w.sel.done = True
    reschedule(w.sel.task, _Value((w.index, result)))


def _fire_error(w: _Waiter, exc: BaseException) -> None:
    w.sel.done = True
    reschedule(w.sel.task, _Error(exc))


class Channel:
    """A typed-by-convention, any-value channel; capacity 0 is a rendezvous."""

    __slots__ = ("__weakref__", "_buf", "_capacity", "_closed", "_recvq", "_sendq", "name")

    def __init__(self, capacity: int = 0, name: str | None = None) -> None:
        if capacity < 0 or (capacity != math.inf and capacity != int(capacity)):
            raise ValueError("capacity must be a non-negative integer or math.inf")
        self._capacity = capacity
        self._buf: deque[Any] = deque()
        self._recvq: deque[_Waiter] = deque()
        self._sendq: deque[_Waiter] = deque()
        self._closed = False
        self.name = name

    # -- introspection ---------------------------------------------------------------------
    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def closed(self) -> bool:
        return self._closed

    def __len__(self) -> int:
        """Number of buffered values."""
        return len(self._buf)

    def __repr__(self) -> str:
        state = " closed" if self._closed else ""
        name = self.name or hex(id(self))
        return f"<Channel {name} cap={self._capacity} len={len(self._buf)}{state}>"

    # -- non-blocking attempts (the only places values move) -------------------------------
    def _try_send(self, value: Any) -> bool:
        if self._closed:
            raise ChannelClosed(f"send on closed channel {self.name or ''}".rstrip())
        q = self._recvq
        while q:
            w = q.popleft()
            if not w.sel.done:
                _fire(w, value)
                return True
        if len(self._buf) < self._capacity:
            self._buf.append(value)
            return True
        return False

    def _try_recv(self) -> tuple[bool, Any]:
        buf = self._buf
        q = self._sendq
        if buf:
            value = buf.popleft()
            # A slot freed: move the oldest blocked sender's value into the buffer.
            while q:
                w = q.popleft()
                if not w.sel.done:
                    buf.append(w.value)
                    _fire(w, None)
                    break
            return True, value
        while q:
            w = q.popleft()
            if not w.sel.done:
                value = w.value
                _fire(w, None)
                return True, value
        if self._closed:
            raise EndOfChannel(f"channel {self.name or hex(id(self))} closed")
        return False, None

    # -- public API ------------------------------------------------------------------------
    def send_nowait(self, value: Any) -> None:
        if not self._try_send(value):
            raise WouldBlock
        if _tr.ON:
            _tr.channel_event("send", self, value)

    def receive_nowait(self) -> Any:
        ok, value = self._try_recv()
        if not ok:
            raise WouldBlock
        if _tr.ON:
            _tr.channel_event("receive", self, value)
        return value

    async def send(self, value: Any) -> None:
        await checkpoint_if_cancelled()
        if self._try_send(value):
            if _tr.ON:
                _tr.channel_event("send", self, value)
            return
        sel = _Selection(current_task())
        w = _Waiter(sel, 0, value)
        self._sendq.append(w)

        def abort(_: Any) -> Abort:
            sel.done = True
            _discard(self._sendq, w)
            return Abort.SUCCEEDED

        await wait_task_rescheduled(abort)
        if _tr.ON:
            _tr.channel_event("send", self, value)

    async def receive(self) -> Any:
        await checkpoint_if_cancelled()
        ok, value = self._try_recv()
        if not ok:
            sel = _Selection(current_task())
            w = _Waiter(sel, 0)
            self._recvq.append(w)

            def abort(_: Any) -> Abort:
                sel.done = True
                _discard(self._recvq, w)
                return Abort.SUCCEEDED

            _, value = await wait_task_rescheduled(abort)
        if _tr.ON:
            _tr.channel_event("receive", self, value)
        return value

    def close(self) -> None:
        """Close: blocked receivers see EndOfChannel once the buffer is empty (it is, if any
        wait); blocked senders get ChannelClosed. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if _tr.ON:
            _tr.channel_event("close", self, None)
        rq, self._recvq = self._recvq, deque()
        for w in rq:
            if not w.sel.done:
                exc = EndOfChannel(f"channel {self.name or ''} closed")
                exc.index = w.index
                _fire_error(w, exc)
        sq, self._sendq = self._sendq, deque()
        for w in sq:
            if not w.sel.done:
                exc2 = ChannelClosed(f"channel {self.name or ''} closed while sending")
                exc2.index = w.index
                _fire_error(w, exc2)

    def __aiter__(self) -> AsyncIterator[Any]:
        return self

    async def __anext__(self) -> Any:
        try:
            return await self.receive()
        except EndOfChannel:
            raise StopAsyncIteration from None


def _any_live(q: deque[_Waiter]) -> bool:
    for w in q:  # noqa: SIM110 - a plain loop is cheaper than any(<generator>) here
        if not w.sel.done:
            return True
    return False


def _discard(q: deque[_Waiter], w: _Waiter) -> None:
    try:  # noqa: SIM105 - cheaper than contextlib.suppress on this path
        q.remove(w)
    except ValueError:
        pass


class Recv:
    """`choose` option: receive one value from `channel`."""

    __slots__ = ("channel",)

    def __init__(self, channel: Channel) -> None:
        self.channel = channel

    def __repr__(self) -> str:
        return f"Recv({self.channel!r})"


class Send:
    """`choose` option: send `value` on `channel`."""

    __slots__ = ("channel", "value")

    def __init__(self, channel: Channel, value: Any) -> None:
        self.channel = channel
        self.value = value

    def __repr__(self) -> str:
        return f"Send({self.channel!r}, {self.value!r})"


async def choose(
    *options: Recv | Send, timeout: float | None = None, default: bool = False
) -> tuple[int | None, Any]:
    """Run exactly one of `options`; return `(index, value)`.

    `value` is the received value for a `Recv`, None for a `Send`. With `default=True` and
    nothing ready, or when `timeout` seconds pass first, returns `(None, None)`.
    A `Recv` on a closed, drained channel fires by raising `EndOfChannel`; a `Send` on a
    closed channel fires by raising `ChannelClosed`; either exception's `.index` names the
    option. Cancellation leaves no option half-done.
    """
    await checkpoint_if_cancelled()
    n = len(options)
    # Find the ready options without touching anything, then fire one of them chosen
    # uniformly at random (fairness). Nothing can change in between: no await.
    ready: list[int] = []
    for i in range(n):
        opt = options[i]
        ch = opt.channel
        if type(opt) is Recv:
            if ch._buf or ch._closed or (ch._sendq and _any_live(ch._sendq)):
                ready.append(i)
        elif type(opt) is Send:
            if ch._closed or len(ch._buf) < ch._capacity or (ch._recvq and _any_live(ch._recvq)):
                ready.append(i)
        else:
            raise TypeError(f"choose option must be Recv or Send, not {opt!r}")
    if ready:
        i = ready[0] if len(ready) == 1 else ready[_randrange(len(ready))]
        opt = options[i]
        try:
            if type(opt) is Recv:
                ok, value = opt.channel._try_recv()
                assert ok
                if _tr.ON:
                    _tr.channel_event("receive", opt.channel, value)
                return i, value
            ok = opt.channel._try_send(opt.value)
            assert ok
            if _tr.ON:
                _tr.channel_event("send", opt.channel, opt.value)
            return i, None
        except (EndOfChannel, ChannelClosed) as exc:
            exc.index = i
            raise
    if default or (timeout is not None and timeout <= 0):
        return None, None
    if n == 0 and timeout is None:
        await trio.sleep_forever()

    sel = _Selection(current_task())
    regs: list[tuple[deque[_Waiter], _Waiter]] = []
    for i in range(n):
        opt = options[i]
        if type(opt) is Recv:
            w = _Waiter(sel, i)
            q = opt.channel._recvq
        else:
            w = _Waiter(sel, i, opt.value)  # type: ignore[union-attr]
            q = opt.channel._sendq
        q.append(w)
        regs.append((q, w))

    def abort(_: Any) -> Abort:
        sel.done = True
        for q, w in regs:
            _discard(q, w)
        return Abort.SUCCEEDED

    try:
        if timeout is None:
            index, value = await wait_task_rescheduled(abort)
        else:
            index = None
            with trio.move_on_after(timeout):
                index, value = await wait_task_rescheduled(abort)
            if index is None:
                return None, None
    finally:
        # Unregister the options that did not fire (the fired one was already dequeued;
        # if the selection was aborted, abort() did this already and this is a no-op).
        if sel.done:
            for q, w in regs:
                if q:
                    _discard(q, w)
    if _tr.ON:
        opt = options[index]
        if type(opt) is Recv:
            _tr.channel_event("receive", opt.channel, value)
        else:
            _tr.channel_event("send", opt.channel, opt.value)  # type: ignore[union-attr]
    return index, value
