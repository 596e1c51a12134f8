"""Debugging aids for hangs: who runs which actor's turn, and who waits for whom.

An actor's turn run inline is driven by hand (`coro.send`), so trio's own stack walk
(`Task.iter_await_frames`) stops at the model's driver frame. These helpers continue into
the handler's coroutine and name the actor, and they show the wait-for graph of calls.

    from chanos.personality.debug import task_tree, supervisor_tree
    print(task_tree())            # every task: its await stack, through actor turns
    print(supervisor_tree(sup))   # every actor under `sup`: state, queue, runner, waits
"""

from __future__ import annotations

import os
from typing import Any

import trio

from .actor import _STATE_NAMES, BUSY, _Cell, _waiting

__all__ = ["supervisor_tree", "task_tree"]


def _frames(coro: Any) -> list[str]:
    """The await chain of a coroutine, descending into inline actor turns."""
    out: list[str] = []
    while coro is not None:
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
        if frame is None:
            break
        code = frame.f_code
        if code.co_name == "_finish_turn" and "cell" in frame.f_locals:
            out.append(f"[turn of {frame.f_locals['cell'].name}]")
            coro = frame.f_locals.get("coro")
            continue
        out.append(f"{code.co_name} ({os.path.basename(code.co_filename)}:{frame.f_lineno})")
        coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
    return out


def task_tree(root: Any = None) -> str:
    """All tasks under `root` (default: the run's root task), one per line, with their
    await stacks (innermost last) and the actor each one is queued on, if any."""
    root = root or trio.lowlevel.current_root_task()
    lines: list[str] = []

    def walk(task: Any, depth: int) -> None:
        waits = _waiting.get(task)
        note = f"  <queued on {waits.name}>" if waits is not None else ""
        lines.append("  " * depth + f"{task.name}{note}")
        for f in _frames(task.coro):
            lines.append("  " * depth + "    " + f)
        for nursery in task.child_nurseries:
            for child in nursery.child_tasks:
                walk(child, depth + 1)

    walk(root, 0)
    return "\n".join(lines)


def supervisor_tree(sup: Any, depth: int = 0) -> str:
    """The actors under a supervisor (recursively): state, queued messages, the task
    running the current turn and what that task is queued on."""
    lines = ["  " * depth + f"supervisor {sup.name} ({sup.strategy}, restarts={sup.restarts})"]
    for child in list(sup._children):
        if type(child) is not _Cell:
            lines.append(supervisor_tree(child, depth + 1))
            continue
        queued = len(child.mailbox) if child.mailbox else 0
        desc = f"{child.name}: {_STATE_NAMES[child.state]}"
        if queued:
            desc += f", {queued} queued"
        runner = child.runner
        if runner is not None and child.state == BUSY:
            desc += f", turn in task {runner.name!r}"
            waits = _waiting.get(runner)
            if waits is not None:
                desc += f" which is queued on {waits.name}"
        lines.append("  " * (depth + 1) + desc)
    return "\n".join(lines)
