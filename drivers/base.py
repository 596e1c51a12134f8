"""BlockDriver: what every chanos driver actor has in common.

A driver is an actor (``chanos.personality.Actor``): requests reach it through its mailbox,
it serves them one at a time in arrival order with plain procedural code, and an idle
driver is called inline in the caller's task, so a request that needs no waiting (a RAM
disk copy, a page-cache hit) costs about a procedure call. Subclasses move the bytes by
implementing ``do_read``, ``do_write``, ``do_flush`` and ``do_discard``, and may answer
more messages in ``control``; ``do_prefetch`` (a read-ahead hint) is optional.

The common part here: the protocol dispatch, range checks (EINVAL), the read-only and
removed states (EROFS, ENODEV), Info, event subscriptions, and turning a device error
into an event before it is answered: an I/O failure publishes ``IOErrorEvent``; EROFS
from the medium turns the device read-only (``ReadOnlyEvent``); ENODEV/ENXIO marks it
removed (``RemovedEvent``). Caller mistakes (EINVAL) and refusals in a known state
(EROFS on a read-only device, ENODEV after removal) are answered without an event.

Subscriptions live in the instance: a driver restarted by its supervisor starts with none.
"""

from __future__ import annotations

import errno
from typing import Any

from chanos.drivers.events import EventBus
from chanos.drivers.protocol import (
    DeviceInfo,
    Discard,
    Flush,
    Info,
    IOErrorEvent,
    Prefetch,
    Read,
    ReadOnlyEvent,
    RemovedEvent,
    Subscribe,
    Unsubscribe,
    Write,
)
from chanos.personality import Actor

_EMPTY = memoryview(b"")


class BlockDriver(Actor):
    """Base class of the drivers; ``size``/``block_size`` are set by ``started`` at latest."""

    def __init__(self, name: str, read_only: bool = False) -> None:
        self.name = name
        self.size = 0
        self.block_size = 512
        self.read_only = read_only
        self.removed: str | None = None
        self.events = EventBus()

    # ---------------------------------------------------------------- dispatch

    async def handle(self, msg: Any) -> Any:
        # The two hot cases test their range inline and call the device directly; every
        # refusal takes the slow path through _check, which says precisely what is wrong.
        match msg:
            case Read():
                o, n = msg.offset, msg.length
                if n > 0 and o >= 0 and o + n <= self.size and self.removed is None:
                    try:
                        return await self.do_read(o, n)
                    except OSError as e:
                        self._note_error("read", o, n, e)
                        raise
                self._check(o, n, False)
                return _EMPTY
            case Write():
                o, d = msg.offset, msg.data
                n = len(d)
                if (
                    n > 0
                    and o >= 0
                    and o + n <= self.size
                    and self.removed is None
                    and not self.read_only
                ):
                    try:
                        return await self.do_write(o, d)
                    except OSError as e:
                        self._note_error("write", o, n, e)
                        raise
                self._check(o, n, True)
                return None
            case Prefetch(offset=o, length=n):
                # A hint: ignored when it makes no sense, never answered with an error.
                if n > 0 and o >= 0 and o + n <= self.size and self.removed is None:
                    self.do_prefetch(o, n)
            case Flush():
                if self.removed is not None:
                    raise self._removed_error()
                try:
                    await self.do_flush()
                except OSError as e:
                    self._note_error("flush", 0, 0, e)
                    raise
            case Discard(offset=o, length=n):
                self._check(o, n, True)
                if n == 0:
                    return None
                try:
                    await self.do_discard(o, n)
                except OSError as e:
                    self._note_error("discard", o, n, e)
                    raise
            case Info():
                if self.removed is not None:
                    raise self._removed_error()
                return DeviceInfo(self.size, self.block_size, self.read_only)
            case Subscribe(events=ch):
                self.events.subscribe(ch)
            case Unsubscribe(events=ch):
                self.events.unsubscribe(ch)
            case _:
                return await self.control(msg)
        return None

    async def control(self, msg: Any) -> Any:
        """Messages beyond the block protocol; subclasses extend this."""
        raise OSError(errno.EOPNOTSUPP, f"{self.name}: unknown request {type(msg).__name__}")

    # ---------------------------------------------------------------- the device

    async def do_read(self, offset: int, length: int) -> bytes | memoryview:
        raise NotImplementedError

    def do_prefetch(self, offset: int, length: int) -> None:
        """Start reading the range ahead, without waiting for it (default: nothing)."""

    async def do_write(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        raise NotImplementedError

    async def do_flush(self) -> None:
        raise NotImplementedError

    async def do_discard(self, offset: int, length: int) -> None:
        raise NotImplementedError

    # ---------------------------------------------------------------- state

    def _check(self, offset: int, length: int, writing: bool) -> None:
        if self.removed is not None:
            raise self._removed_error()
        if offset < 0 or length < 0 or offset + length > self.size:
            raise OSError(
                errno.EINVAL,
                f"{self.name}: {length} bytes at offset {offset} are outside the device "
                f"({self.size} bytes)",
            )
        if writing and self.read_only:
            raise OSError(errno.EROFS, f"{self.name}: device is read-only")

    def _removed_error(self) -> OSError:
        return OSError(errno.ENODEV, f"{self.name}: device removed ({self.removed})")

    def set_read_only(self, reason: str) -> None:
        if not self.read_only:
            self.read_only = True
            self.events.publish(ReadOnlyEvent(self.name, reason))

    def set_removed(self, reason: str) -> None:
        if self.removed is None:
            self.removed = reason
            self.events.publish(RemovedEvent(self.name, reason))

    def _note_error(self, op: str, offset: int, length: int, err: OSError) -> None:
        code = err.errno or errno.EIO
        if code in (errno.ENODEV, errno.ENXIO):
            self.set_removed(str(err))
        elif code == errno.EROFS:
            self.set_read_only(str(err))
        else:
            self.events.publish(IOErrorEvent(self.name, op, offset, length, code))
