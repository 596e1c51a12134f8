"""The block-device protocol: the messages every chanos driver answers.

Offsets and lengths are in bytes. A driver accepts any byte range inside the device;
the file system normally speaks in whole blocks, and the drivers merge adjacent requests
into single system calls, so nothing here forces alignment.

Replies:
    Read     -> the data: ``bytes`` or a read-only ``memoryview`` of exactly ``length`` bytes
    Prefetch -> None at once (a hint: the range will be read soon; a driver may start
                reading it ahead, or ignore it)
    Write    -> None (the data is in the device's write cache; durable only after Flush)
    Flush    -> None (every write completed before the flush reply is durable)
    Discard  -> None (the range reads back as zeros afterwards)
    Info     -> DeviceInfo
    Subscribe / Unsubscribe -> None

Errors come back as ``OSError(errno, message)`` raised in the caller: EIO for a failed
transfer, EROFS for a write to a read-only device, EINVAL for a range outside the device,
ENODEV once the device has been removed.

Events (published, never raised): every subscriber channel receives ``IOErrorEvent`` for a
request answered with an I/O error, ``ReadOnlyEvent`` when the device turns read-only and
``RemovedEvent`` when it goes away. A driver never blocks on a slow subscriber: an event
that does not fit in a subscriber's buffer is dropped and counted, and the next event that
does fit carries that count in ``lost_before``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# ---------------------------------------------------------------- requests


@dataclass(frozen=True, slots=True)
class Read:
    offset: int
    length: int


@dataclass(frozen=True, slots=True)
class Prefetch:
    """The range will be read soon: a hint, answered at once, never an error."""

    offset: int
    length: int


@dataclass(frozen=True, slots=True)
class Write:
    offset: int
    data: bytes | bytearray | memoryview


@dataclass(frozen=True, slots=True)
class Flush:
    pass


@dataclass(frozen=True, slots=True)
class Discard:
    offset: int
    length: int


@dataclass(frozen=True, slots=True)
class Info:
    pass


@dataclass(frozen=True, slots=True)
class Subscribe:
    """Deliver this device's events to ``events`` (a buffered Channel) from now on."""

    events: Any


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    events: Any


# ----------------------------------------------------------------- replies


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    size: int
    block_size: int
    read_only: bool


# ------------------------------------------------------------------ events


@dataclass(frozen=True, slots=True)
class IOErrorEvent:
    """A request was answered with an error by the device (not a caller mistake)."""

    device: str
    op: str  # "read" | "write" | "flush" | "discard"
    offset: int
    length: int
    errno: int
    lost_before: int = 0


@dataclass(frozen=True, slots=True)
class ReadOnlyEvent:
    """The device has turned read-only; further writes get EROFS."""

    device: str
    reason: str
    lost_before: int = 0


@dataclass(frozen=True, slots=True)
class RemovedEvent:
    """The device has gone away; every further request gets ENODEV."""

    device: str
    reason: str
    lost_before: int = 0


DeviceEvent = IOErrorEvent | ReadOnlyEvent | RemovedEvent
Request = Read | Prefetch | Write | Flush | Discard | Info | Subscribe | Unsubscribe
