"""Control messages of the fault-injection driver (on top of the block protocol).

    InjectError(...)   -> int (rule id)     fail matching requests with an errno
    ClearErrors(rule=None) -> None          drop one rule, or all of them
    SetReadOnly(flag)  -> None              turn the device read-only (EROFS) or back
    Crash(keep, seed, tear) -> CrashOutcome power cut: unflushed writes are lost, a seeded
                                            subset kept, one possibly torn; then the device
                                            is gone (ENODEV) and the medium holds the result
    Remove()           -> None              the device disappears (ENODEV, RemovedEvent)
    GetLog()           -> WriteLog          base image + acknowledged writes and flushes
    GetStats()         -> FaultStats

An ``InjectError`` rule matches a request when the operation matches (``op`` is "read",
"write", "flush", "discard" or "any") and its byte range overlaps ``[start, end)``
(``end=None``: to the end of the device; flushes match any range). The first ``skip``
matches pass untouched; after that each match fails with probability ``probability``
(drawn from ``random.Random(seed)``, so runs repeat exactly), until ``count`` failures have
been injected (``count=None``: forever). A failed write changes nothing on the device.
"""

from __future__ import annotations

import errno as _errno
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class InjectError:
    op: str = "any"
    start: int = 0
    end: int | None = None
    count: int | None = None
    skip: int = 0
    probability: float = 1.0
    seed: int = 0
    errno: int = _errno.EIO


@dataclass(frozen=True, slots=True)
class ClearErrors:
    rule: int | None = None


@dataclass(frozen=True, slots=True)
class SetReadOnly:
    read_only: bool = True


@dataclass(frozen=True, slots=True)
class Crash:
    keep: float = 0.0
    seed: int = 0
    tear: bool = False


@dataclass(frozen=True, slots=True)
class Remove:
    pass


@dataclass(frozen=True, slots=True)
class GetLog:
    pass


@dataclass(frozen=True, slots=True)
class GetStats:
    pass


@dataclass(frozen=True, slots=True)
class FaultStats:
    injected: int  # requests failed by a rule
    unflushed: int  # writes now in the volatile cache
    logged: int  # entries in the write log (0 when not recording)
