"""Structured task scopes: the model's `start { f(); }`, thin over a trio nursery.

    async with open_scope() as scope:
        scope.start(worker, ch)       # a lightweight task; the block waits for all of them
        scope.cancel()                # cancel everything started in the scope

An exception in any task cancels the others and propagates out of the block; a single
exception surfaces as itself rather than wrapped in an exception group.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import trio

from . import tracing as _tr

__all__ = ["Scope", "open_scope"]


class Scope:
    """Handle of an open scope."""

    __slots__ = ("_nursery",)

    def __init__(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery

    def start(self, fn: Callable[..., Awaitable[Any]], *args: Any, name: str | None = None) -> None:
        """Start `fn(*args)` as a task in this scope."""
        if _tr.ON:
            _tr.actor_event("spawn", name or getattr(fn, "__qualname__", repr(fn)), "task")
        self._nursery.start_soon(fn, *args, name=name)

    async def start_and_wait(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        """Start a task that calls `task_status.started(value)`; return that value."""
        return await self._nursery.start(fn, *args)

    def cancel(self) -> None:
        self._nursery.cancel_scope.cancel()

    @property
    def cancel_scope(self) -> trio.CancelScope:
        return self._nursery.cancel_scope


@asynccontextmanager
async def open_scope() -> AsyncIterator[Scope]:
    try:
        async with trio.open_nursery() as nursery:
            yield Scope(nursery)
    except BaseExceptionGroup as group:
        if len(group.exceptions) == 1 and not isinstance(group.exceptions[0], BaseExceptionGroup):
            raise group.exceptions[0] from None
        raise
