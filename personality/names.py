"""Names: a registry from names to actor addresses or channels, per trio run.

`register(name, target)` fails if the name is taken by a live target; `whereis(name)`
returns the target or None; a dead actor's name is released lazily (whereis sees None).
"""

from __future__ import annotations

from typing import Any

import trio

from .actor import ActorRef
from .channel import Channel

__all__ = ["register", "registered", "unregister", "whereis"]

_REGISTRY: trio.lowlevel.RunVar[dict[str, Any]] = trio.lowlevel.RunVar("chanos_names")


def _table() -> dict[str, Any]:
    try:
        return _REGISTRY.get()
    except LookupError:
        table: dict[str, Any] = {}
        _REGISTRY.set(table)
        return table


def _live(target: Any) -> bool:
    if type(target) is ActorRef:
        return target.alive
    return True


def register(name: str, target: ActorRef | Channel) -> None:
    """Bind `name` to an ActorRef or Channel. Raises ValueError if already bound."""
    if not isinstance(target, ActorRef | Channel):
        raise TypeError(f"can only register an ActorRef or a Channel, not {target!r}")
    table = _table()
    old = table.get(name)
    if old is not None and _live(old):
        raise ValueError(f"name {name!r} is already registered to {old!r}")
    table[name] = target


def whereis(name: str) -> Any:
    """The ActorRef/Channel registered under `name`, or None."""
    table = _table()
    target = table.get(name)
    if target is not None and not _live(target):
        del table[name]
        return None
    return target


def unregister(name: str) -> None:
    """Remove `name` (no error if it is not registered)."""
    _table().pop(name, None)


def registered() -> dict[str, Any]:
    """A snapshot of the live registrations."""
    return {n: t for n, t in _table().items() if _live(t)}
