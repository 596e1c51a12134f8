"""Fault injection: a driver that wraps another driver and makes it fail on purpose.

``FaultInjectionDriver(inner_ref, ...)`` is an actor that sits between its clients and an
inner device (any driver, reached by messages). It models the device's volatile write
cache: an acknowledged write is held here until a flush, then written through to the inner
device, which therefore always holds exactly what a power cut would leave if no unflushed
write had made it yet. Reads see the cached writes over the inner data, as a real disk's
reads do.

On top of that model (control messages in ``chanos.drivers.fault_protocol``):
  * errors: rules failing chosen reads/writes/flushes/discards by byte range, by count
    (skip the first N matches, fail at most M), or at random with a seed;
  * a read-only switch (EROFS, with a ReadOnlyEvent);
  * crash simulation: every unflushed write is dropped, except a seeded random subset
    (``keep``) and possibly one write torn at sector granularity (``tear``); after the
    crash the device answers ENODEV and the inner device holds the crash image;
  * removal (ENODEV, RemovedEvent);
  * a write log (``record=True``): the inner device's contents at start plus every
    acknowledged write and flush in order, so ``WriteLog.image_at`` / ``crash_image``
    rebuild the device at any prefix.

With ``volatile=False`` writes go straight through to the inner device (no crash model;
errors, read-only and the log still work).
"""

from __future__ import annotations

import errno
import random
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from chanos.drivers.base import BlockDriver
from chanos.drivers.client import BlockDevice
from chanos.drivers.fault_protocol import (
    ClearErrors,
    Crash,
    FaultStats,
    GetLog,
    GetStats,
    InjectError,
    Remove,
    SetReadOnly,
)
from chanos.drivers.writelog import (
    CrashOutcome,
    LoggedFlush,
    LoggedWrite,
    WriteLog,
    choose_crash,
    surviving_writes,
)

_PAGE = 4096


@dataclass(slots=True)
class _Rule:
    spec: InjectError
    rng: random.Random
    seen: int = 0
    failed: int = 0

    def fires(self, op: str, offset: int, length: int) -> bool:
        s = self.spec
        if s.op != "any" and s.op != op:
            return False
        if op != "flush":
            end = s.end if s.end is not None else 1 << 62
            if offset >= end or offset + max(length, 1) <= s.start:
                return False
        if s.count is not None and self.failed >= s.count:
            return False
        self.seen += 1
        if self.seen <= s.skip:
            return False
        if s.probability < 1.0 and self.rng.random() >= s.probability:
            return False
        self.failed += 1
        return True


class FaultInjectionDriver(BlockDriver):
    def __init__(
        self,
        inner: Any,
        *,
        volatile: bool = True,
        record: bool = False,
        rules: Iterable[InjectError] = (),
        name: str = "fault",
    ) -> None:
        super().__init__(name)
        self.inner = BlockDevice(inner)
        self.volatile = volatile
        self.record = record
        self.rules: dict[int, _Rule] = {}
        self._next_rule = 1
        for spec in rules:
            self._add_rule(spec)
        self.injected = 0
        self.pending: list[LoggedWrite] = []  # the volatile write cache, in order
        self._pages: dict[int, list[int]] = {}  # page -> positions in ``pending``
        self.log: WriteLog | None = None

    async def started(self) -> None:
        info = await self.inner.info()
        self.size, self.block_size = info.size, info.block_size
        self.read_only = self.read_only or info.read_only
        if self.record:
            self.log = WriteLog(bytes(await self.inner.read(0, self.size)))

    def _add_rule(self, spec: InjectError) -> int:
        if spec.op not in ("any", "read", "write", "flush", "discard"):
            raise OSError(errno.EINVAL, f"unknown operation {spec.op!r} in {spec!r}")
        rid = self._next_rule
        self._next_rule += 1
        self.rules[rid] = _Rule(spec, random.Random(spec.seed))
        return rid

    # ------------------------------------------------------------ data path

    def _inject(self, op: str, offset: int, length: int) -> None:
        for rule in self.rules.values():
            if rule.fires(op, offset, length):
                self.injected += 1
                raise OSError(
                    rule.spec.errno, f"{self.name}: injected {op} error at {offset}+{length}"
                )

    async def do_read(self, offset: int, length: int) -> Any:
        if self.rules:
            self._inject("read", offset, length)
        return await self._read(offset, length)

    async def do_write(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        if self.rules:
            self._inject("write", offset, len(data))
        await self._write(offset, bytes(data))

    async def do_discard(self, offset: int, length: int) -> None:
        if self.rules:
            self._inject("discard", offset, length)
        await self._write(offset, bytes(length))

    async def do_flush(self) -> None:
        if self.rules:
            self._inject("flush", 0, 0)
        await self._flush()

    async def _read(self, offset: int, length: int) -> Any:
        data = await self.inner.read(offset, length)
        if not self.pending:
            return data
        hits: set[int] = set()
        for page in range(offset // _PAGE, (offset + length - 1) // _PAGE + 1):
            hits.update(self._pages.get(page, ()))
        if not hits:
            return data
        buf = bytearray(data)
        end = offset + length
        for pos in sorted(hits):
            w = self.pending[pos]
            lo, hi = max(offset, w.offset), min(end, w.offset + len(w.data))
            if lo < hi:
                buf[lo - offset : hi - offset] = w.data[lo - w.offset : hi - w.offset]
        return memoryview(bytes(buf))

    async def _write(self, offset: int, data: bytes) -> None:
        if self.volatile:
            pos = len(self.pending)
            self.pending.append(LoggedWrite(offset, data))
            for page in range(offset // _PAGE, (offset + len(data) - 1) // _PAGE + 1):
                self._pages.setdefault(page, []).append(pos)
        else:
            await self.inner.write(offset, data)
        if self.log is not None:
            self.log.entries.append(LoggedWrite(offset, data))

    async def _flush(self) -> None:
        await self._write_through(self.pending)
        self.pending = []
        self._pages = {}
        await self.inner.flush()
        if self.log is not None:
            self.log.entries.append(LoggedFlush())

    async def _write_through(self, writes: list[LoggedWrite]) -> None:
        for w in writes:
            await self.inner.write(w.offset, w.data)

    # ------------------------------------------------------------ control

    async def control(self, msg: Any) -> Any:
        match msg:
            case InjectError():
                return self._add_rule(msg)
            case ClearErrors(rule=None):
                self.rules.clear()
            case ClearErrors(rule=rid):
                self.rules.pop(rid, None)
            case SetReadOnly(read_only=True):
                self.set_read_only("switched read-only by fault injection")
            case SetReadOnly(read_only=False):
                self.read_only = False
            case Remove():
                self.set_removed("removed by fault injection")
            case Crash(keep=keep, seed=seed, tear=tear):
                return await self._crash(keep, seed, tear)
            case GetLog():
                if self.log is None:
                    raise OSError(errno.EINVAL, f"{self.name}: write log not recording")
                return WriteLog(self.log.base, list(self.log.entries))
            case GetStats():
                return FaultStats(
                    self.injected, len(self.pending), len(self.log) if self.log else 0
                )
            case _:
                return await super().control(msg)
        return None

    async def _crash(self, keep: float, seed: int, tear: bool) -> CrashOutcome:
        if self.removed is not None:
            raise self._removed_error()
        pending = self.pending
        outcome = choose_crash(pending, keep, seed, tear)
        survivors = surviving_writes(pending, outcome)
        self.pending = []
        self._pages = {}
        await self._write_through(survivors)
        await self.inner.flush()
        self.set_removed("crashed (power cut simulated)")
        return outcome
