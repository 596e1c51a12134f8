"""Supervisors: start actors, restart them when they crash, escalate when that fails.

    async with open_supervisor(name="fs", strategy=ONE_FOR_ONE, max_restarts=3, within=5.0) as sup:
        ref = await sup.start(ChildSpec(name="driver", factory=lambda: Driver(path)))
        sub = await sup.start_supervisor(name="vnodes", strategy=ONE_FOR_ONE)
        vref = await sub.start(ChildSpec(name="vnode 12", factory=..., restart=TEMPORARY))

Semantics (after Erlang/OTP):
- A crash (non-OSError exception in `started()` or `handle`) is reported to the actor's
  supervisor. Restart policy: PERMANENT children are restarted after a crash or a normal
  exit (`Actor.exit()`); TRANSIENT only after a crash; TEMPORARY never. `ref.stop()` is
  final for every policy.
- Strategy: ONE_FOR_ONE restarts the crashed child; ONE_FOR_ALL takes all children down
  (each finishes its current message, runs `stopped()`, its queued requests get ActorDied)
  and restarts them in start order; REST_FOR_ONE does that for the crashed child and the
  children started after it.
- A restarted child keeps its ActorRef (the address is stable); it gets a fresh instance
  from its factory. Requests arriving during the restart wait for the new instance.
- Intensity: more than `max_restarts` restarts within `within` seconds and the supervisor
  gives up: it takes its children down and fails. A nested supervisor's failure is a crash
  of a child of its parent, which applies its own strategy (restarting a supervisor
  restarts all its non-temporary children fresh). The root supervisor's failure makes its
  `async with` raise `RestartIntensityExceeded`; its children are then dead.
- Leaving the `async with` normally stops all children (reverse start order; each
  finishes its current message, then `stopped()` runs; `shutdown_timeout` bounds that
  wait). Leaving by an exception kills them: dead at once, without `stopped()`; a turn
  blocked inline in a caller's task is aborted and that caller gets ActorDied.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import trio

from . import tracing as _tr
from .actor import (
    _QUIESCE,
    BUSY,
    DEAD,
    IDLE,
    RESTARTING,
    STOPPING,
    Actor,
    ActorRef,
    _Cell,
    _fail_queue,
    _mark_dead,
    _request_marker,
    _start_instance,
    _wait_state,
)

__all__ = [
    "ONE_FOR_ALL",
    "ONE_FOR_ONE",
    "PERMANENT",
    "REST_FOR_ONE",
    "TEMPORARY",
    "TRANSIENT",
    "ChildSpec",
    "RestartIntensityExceeded",
    "Supervisor",
    "open_supervisor",
]

log = logging.getLogger("chanos.personality")

ONE_FOR_ONE = "one_for_one"
ONE_FOR_ALL = "one_for_all"
REST_FOR_ONE = "rest_for_one"
PERMANENT = "permanent"
TRANSIENT = "transient"
TEMPORARY = "temporary"

_STRATEGIES = (ONE_FOR_ONE, ONE_FOR_ALL, REST_FOR_ONE)
_POLICIES = (PERMANENT, TRANSIENT, TEMPORARY)
_ids = itertools.count(1)


@dataclass(frozen=True, slots=True)
class ChildSpec:
    """How to (re)start a child: `factory()` returns a fresh Actor."""

    name: str
    factory: Callable[[], Actor]
    restart: str = PERMANENT

    def __post_init__(self) -> None:
        if self.restart not in _POLICIES:
            raise ValueError(f"restart must be one of {_POLICIES}, not {self.restart!r}")


class RestartIntensityExceeded(Exception):
    """A supervisor saw more than max_restarts restarts within its period and gave up."""

    def __init__(self, supervisor: str, cause: BaseException | None) -> None:
        super().__init__(f"supervisor {supervisor}: restart intensity exceeded (last: {cause!r})")
        self.supervisor = supervisor
        self.cause = cause


class Supervisor:
    """A node of the supervision tree. Made by `open_supervisor` / `start_supervisor`."""

    def __init__(
        self,
        name: str,
        strategy: str,
        max_restarts: int,
        within: float,
        nursery: trio.Nursery,
        parent: Supervisor | None,
    ) -> None:
        if strategy not in _STRATEGIES:
            raise ValueError(f"strategy must be one of {_STRATEGIES}, not {strategy!r}")
        self.name = name
        self.strategy = strategy
        self.max_restarts = max_restarts
        self.within = within
        self.parent = parent
        self._nursery = nursery
        # Ordered set of children (start order): _Cell or Supervisor.
        self._children: dict[Any, None] = {}
        self._events: deque[tuple[Any, int, BaseException | None]] = deque()
        self._lot = trio.lowlevel.ParkingLot()
        self._history: deque[float] = deque()
        self._closing = False
        self._failed = False  # gave up; waiting for the parent to restart it
        self.gen = 0
        self.restarts = 0  # total restarts performed (for observation and tests)

    def __repr__(self) -> str:
        return f"<Supervisor {self.name} {self.strategy} children={len(self._children)}>"

    # -- public API ------------------------------------------------------------------------
    async def start(self, spec: ChildSpec) -> ActorRef:
        """Start a child actor (runs its `started()`); returns its address. An exception in
        the first `started()` propagates here and the child is not kept."""
        if self._closing or self._failed:
            raise RuntimeError(f"supervisor {self.name} is not running")
        actor = spec.factory()
        cell = _Cell(spec.name, spec, self)
        if _tr.ON:
            _tr.actor_event("spawn", cell.name, self.name)
        self._children[cell] = None
        ref = cell.ref  # (a child that stops while starting lets go of it)
        assert ref is not None
        try:
            await _start_instance(cell, actor)
        except BaseException:
            self._children.pop(cell, None)
            cell.state = DEAD
            _fail_queue(cell, None)
            raise
        return ref

    async def start_supervisor(
        self,
        name: str,
        strategy: str = ONE_FOR_ONE,
        max_restarts: int = 3,
        within: float = 5.0,
    ) -> Supervisor:
        """Start a nested supervisor as a (permanent) child of this one."""
        if self._closing or self._failed:
            raise RuntimeError(f"supervisor {self.name} is not running")
        sub = Supervisor(name, strategy, max_restarts, within, self._nursery, self)
        self._children[sub] = None
        self._nursery.start_soon(sub._loop, name=f"supervisor {name}")
        return sub

    @property
    def children(self) -> list[ActorRef | Supervisor]:
        """Live children in start order (actor refs and nested supervisors)."""
        return [c.ref if type(c) is _Cell else c for c in self._children]

    def __len__(self) -> int:
        return len(self._children)

    # -- called by the actor runtime -------------------------------------------------------
    def _child_exited(self, child: Any, exc: BaseException | None) -> None:
        self._events.append((child, child.gen, exc))
        self._lot.unpark_all()
        if self.strategy != ONE_FOR_ONE and not self._closing and _restartable(child, exc):
            # Take the siblings that will be restarted down *now*, so that from the moment
            # the crash is reported nobody gets an answer from a sibling's old state. Idle
            # ones stop taking messages at once; busy ones after their current message.
            # Their stopped() and the restarts run in the supervisor's task.
            kids = list(self._children)
            if child in kids:
                start = 0 if self.strategy == ONE_FOR_ALL else kids.index(child) + 1
                for other in kids[start:]:
                    if other is not child:
                        _take_down(other)

    def _forget(self, child: Any) -> None:
        self._children.pop(child, None)

    # -- the supervisor's task -------------------------------------------------------------
    async def _loop(self) -> None:
        while True:
            while self._events:
                child, gen, exc = self._events.popleft()
                await self._handle(child, gen, exc)
            await self._lot.park()

    def _down(self, child: Any) -> bool:
        """Is this child down and waiting for our decision?"""
        if type(child) is _Cell:
            return child.state == RESTARTING
        return child._failed

    async def _handle(self, child: Any, gen: int, exc: BaseException | None) -> None:
        if child not in self._children or child.gen != gen or not self._down(child):
            return  # stale: already restarted, stopped, or taken down by someone else
        if self._closing:
            _kill(child)
            return
        if not _restartable(child, exc):
            _kill(child)
            return
        now = trio.current_time()
        hist = self._history
        hist.append(now)
        while hist and hist[0] < now - self.within:
            hist.popleft()
        if len(hist) > self.max_restarts:
            await self._give_up(exc)
            return
        if self.strategy == ONE_FOR_ONE:
            affected = [child]  # (no list of all children: there may be 100,000 vnodes)
        elif self.strategy == ONE_FOR_ALL:
            affected = list(self._children)
        else:
            kids = list(self._children)
            affected = kids[kids.index(child) :]
        for other in reversed(affected):
            if other is not child:
                await _quiesce(other)
        for c in affected:
            if c is not child and type(c) is _Cell and c.spec.restart == TEMPORARY:
                _kill(c)
                continue
            await self._restart(c)

    def _pending_covers(self, cell: _Cell) -> bool:
        """Will a crash report still waiting in our queue restart `cell` anyway? Then it
        must stay down until that report is handled: restarting it now would let it answer
        requests made after that crash from an instance that is about to be replaced."""
        if not self._events:
            return False
        kids = list(self._children) if self.strategy == REST_FOR_ONE else []
        for child, gen, exc in self._events:
            if child.gen != gen or not self._down(child) or not _restartable(child, exc):
                continue
            if child is cell or self.strategy == ONE_FOR_ALL:
                return True
            if (
                self.strategy == REST_FOR_ONE
                and child in kids
                and cell in kids
                and kids.index(child) <= kids.index(cell)
            ):
                return True
        return False

    async def _restart(self, child: Any) -> None:
        if type(child) is _Cell:
            if child.state != RESTARTING or self._pending_covers(child):
                return
            self.restarts += 1
            if _tr.ON:
                _tr.actor_event("restart", child.name, self.name)
            try:
                actor = child.spec.factory()
                await _start_instance(child, actor)
            except Exception as exc:
                log.error("actor %s: restart failed: %r", child.name, exc, exc_info=exc)
                child.actor = None
                child.state = RESTARTING
                self._child_exited(child, exc)
            return
        # A nested supervisor: restart all its children from fresh state.
        self.restarts += 1
        if _tr.ON:
            _tr.actor_event("restart", f"supervisor {child.name}", self.name)
        child._failed = False
        child.gen += 1
        child._history.clear()
        for c in list(child._children):
            if type(c) is _Cell and c.spec.restart == TEMPORARY:
                _kill(c)
            else:
                await child._restart(c)

    async def _give_up(self, exc: BaseException | None) -> None:
        log.error("supervisor %s: restart intensity exceeded; last cause: %r", self.name, exc)
        for c in reversed(list(self._children)):
            await _quiesce(c)
        if self.parent is not None and not self.parent._closing:
            self._failed = True
            self.parent._child_exited(self, RestartIntensityExceeded(self.name, exc))
            return
        for c in list(self._children):
            _kill(c)
        raise RestartIntensityExceeded(self.name, exc)

    async def _shutdown(self) -> None:
        """Stop all children, newest first (each finishes its message, runs stopped())."""
        self._closing = True
        for c in reversed(list(self._children)):
            if type(c) is _Cell:
                if c.ref is not None:  # None: it died while an older sibling stopped
                    await c.ref.stop()
            else:
                await c._shutdown()
        self._children.clear()


def _restartable(child: Any, exc: BaseException | None) -> bool:
    policy = child.spec.restart if type(child) is _Cell else PERMANENT
    return not (policy == TEMPORARY or (policy == TRANSIENT and exc is None))


def _take_down(child: Any) -> None:
    """Synchronous part of `_quiesce`: stop accepting turns (see `_child_exited`)."""
    if type(child) is not _Cell:
        for c in child._children:
            _take_down(c)
        return
    if child.state == IDLE:
        child.state = RESTARTING  # instance kept: _quiesce runs its stopped()
    elif child.state == BUSY:
        _request_marker(child, _QUIESCE)


async def _quiesce(child: Any) -> None:
    """Take a child down for a restart: it finishes its current message, its queued
    requests get ActorDied, its `stopped()` runs. Its address stays valid."""
    if type(child) is not _Cell:
        for c in reversed(list(child._children)):
            await _quiesce(c)
        return
    st = child.state
    if st == IDLE:
        child.state = RESTARTING
    elif st == BUSY:
        _request_marker(child, _QUIESCE)
        await _wait_state(child, (RESTARTING, DEAD))
        if child.state == DEAD:
            return
    elif st == STOPPING:
        await _wait_state(child, (RESTARTING, DEAD))
        return
    elif st == DEAD or child.actor is None:
        return  # dead, or crashed / starting (no instance to stop)
    # Taken down (RESTARTING with its old instance): requests queued to the old instance
    # were failed when its turn ended; requests since then wait for the new instance.
    actor = child.actor
    child.actor = None
    child.gen += 1  # any crash report for the old instance is now stale
    if actor is not None:
        try:
            await actor.stopped()
        except Exception as exc:
            log.error("actor %s: stopped() failed: %r", child.name, exc, exc_info=exc)


def _kill(child: Any) -> None:
    """Dead at once, without stopped() (crashed children, or the tree is failing)."""
    if type(child) is _Cell:
        _mark_dead(child, None)
        return
    child._closing = True
    for c in list(child._children):
        _kill(c)
    if child.parent is not None:
        child.parent._forget(child)


@asynccontextmanager
async def open_supervisor(
    name: str = "root",
    strategy: str = ONE_FOR_ONE,
    max_restarts: int = 3,
    within: float = 5.0,
    shutdown_timeout: float | None = None,
) -> AsyncIterator[Supervisor]:
    """A root supervisor for the duration of the block (see the module docstring).

    On a clean exit every child finishes its current message and runs `stopped()`; with
    `shutdown_timeout` set, children still not stopped after that many seconds are marked
    dead without waiting (a turn blocked forever cannot hang the exit).
    """
    try:
        async with trio.open_nursery() as nursery:
            sup = Supervisor(name, strategy, max_restarts, within, nursery, None)
            nursery.start_soon(sup._loop, name=f"supervisor {name}")
            try:
                yield sup
            except BaseException:
                sup._closing = True
                for c in list(sup._children):
                    _kill(c)
                raise
            else:
                with trio.CancelScope(shield=True):
                    with trio.move_on_after(
                        math.inf if shutdown_timeout is None else shutdown_timeout
                    ) as timer:
                        await sup._shutdown()
                    if timer.cancelled_caught:
                        log.error("supervisor %s: shutdown timed out; killing the rest", name)
                        for c in list(sup._children):
                            _kill(c)
            finally:
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        # The nursery is an implementation detail: surface a single error as itself.
        leaves = list(_leaves(group))
        if len(leaves) == 1:
            raise leaves[0] from None
        raise


def _leaves(group: BaseExceptionGroup) -> Any:
    for e in group.exceptions:
        if isinstance(e, BaseExceptionGroup):
            yield from _leaves(e)
        else:
            yield e
