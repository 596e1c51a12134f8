"""Tracing of the message model: send, receive, spawn, exit, restart (and crash, stop).

Off by default. Every hook site in the model is guarded by one module-global test
(`if trace.ON:`), so tracing costs one global lookup per event when off. When on, events are
recorded in memory (and/or passed to user hooks) and can be written as Chrome trace-event
JSON, which Perfetto (ui.perfetto.dev) and chrome://tracing load: each actor and each task
gets its own track, an actor's turn is a slice on its track, and a flow arrow joins a
message's send to the turn that handles it.

    from chanos.personality import trace
    trace.enable()
    ...                                  # run the system
    trace.write_chrome("run.trace.json") # open in ui.perfetto.dev
    trace.disable()
"""

from __future__ import annotations

import itertools
import json
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import trio

__all__ = ["ON", "TraceEvent", "Tracer", "trace"]

# The one flag every hook site tests. Only Tracer.enable/disable write it.
ON = False

_flow_ids = itertools.count(1)


@dataclass(frozen=True, slots=True)
class TraceEvent:
    """One traced event.

    kind: "send" (a message queued/handed to an actor), "receive" (an actor's turn on a
    message begins), "reply" (the turn ends; detail = "ok" / "error" / "crash"), "spawn",
    "exit", "restart", "crash", "chan-send", "chan-receive", "chan-close".
    track: the actor's name (actor events) or the task's name (channel events, senders).
    """

    kind: str
    ts_ns: int
    track: str
    peer: str | None
    msg: str | None
    detail: str | None
    flow: int | None


def _task_name() -> str:
    try:
        return trio.lowlevel.current_task().name
    except RuntimeError:
        return "<no task>"


class Tracer:
    """The process-wide tracer (`trace`)."""

    def __init__(self) -> None:
        self.events: list[TraceEvent] = []
        self._record = True
        self._hooks: list[Callable[[TraceEvent], None]] = []
        self._limit: int | None = None

    @property
    def enabled(self) -> bool:
        return ON

    def enable(
        self,
        *,
        record: bool = True,
        hooks: tuple[Callable[[TraceEvent], None], ...] | list[Any] = (),
        limit: int | None = 1_000_000,
    ) -> None:
        """Start tracing. `record` keeps events in `self.events` (at most `limit`; older
        events are kept, newer dropped); each hook is called with every TraceEvent."""
        global ON
        self._record = record
        self._hooks = list(hooks)
        self._limit = limit
        ON = True

    def disable(self) -> None:
        global ON
        ON = False

    def clear(self) -> None:
        self.events = []

    def add_hook(self, hook: Callable[[TraceEvent], None]) -> None:
        self._hooks.append(hook)

    def remove_hook(self, hook: Callable[[TraceEvent], None]) -> None:
        self._hooks.remove(hook)

    @contextmanager
    def recording(self, path: str | os.PathLike[str] | None = None) -> Iterator[Tracer]:
        """`with trace.recording("x.json"):` enable, run, disable, write (if a path)."""
        self.clear()
        self.enable()
        try:
            yield self
        finally:
            self.disable()
            if path is not None:
                self.write_chrome(path)

    # -- emission (only reached when ON) ---------------------------------------------------
    def emit(
        self,
        kind: str,
        track: str,
        peer: str | None = None,
        msg: str | None = None,
        detail: str | None = None,
        flow: int | None = None,
    ) -> None:
        ev = TraceEvent(kind, time.perf_counter_ns(), track, peer, msg, detail, flow)
        if self._record and (self._limit is None or len(self.events) < self._limit):
            self.events.append(ev)
        for hook in self._hooks:
            hook(ev)

    # -- Chrome trace-event format ---------------------------------------------------------
    def chrome_events(self) -> list[dict[str, Any]]:
        tids: dict[str, int] = {}
        out: list[dict[str, Any]] = []

        def tid(track: str) -> int:
            t = tids.get(track)
            if t is None:
                t = tids[track] = len(tids) + 1
                out.append(
                    {"ph": "M", "name": "thread_name", "pid": 1, "tid": t, "args": {"name": track}}
                )
            return t

        for ev in self.events:
            ts = ev.ts_ns / 1000.0
            args: dict[str, Any] = {}
            if ev.msg is not None:
                args["msg"] = ev.msg
            if ev.peer is not None:
                args["peer"] = ev.peer
            if ev.detail is not None:
                args["detail"] = ev.detail
            t = tid(ev.track)
            if ev.kind == "receive":
                out.append(
                    {"ph": "B", "name": ev.msg or "turn", "cat": "actor", "pid": 1, "tid": t,
                     "ts": ts, "args": args}
                )  # fmt: skip
                if ev.flow is not None:
                    out.append(
                        {"ph": "f", "bp": "e", "name": "message", "cat": "flow", "id": ev.flow,
                         "pid": 1, "tid": t, "ts": ts}
                    )  # fmt: skip
            elif ev.kind == "reply":
                out.append({"ph": "E", "cat": "actor", "pid": 1, "tid": t, "ts": ts, "args": args})
            else:
                out.append(
                    {"ph": "i", "s": "t", "name": ev.kind + (f" {ev.msg}" if ev.msg else ""),
                     "cat": ev.kind, "pid": 1, "tid": t, "ts": ts, "args": args}
                )  # fmt: skip
                if ev.kind == "send" and ev.flow is not None:
                    out.append(
                        {"ph": "s", "name": "message", "cat": "flow", "id": ev.flow, "pid": 1,
                         "tid": t, "ts": ts}
                    )  # fmt: skip
        return out

    def to_chrome(self) -> dict[str, Any]:
        return {"traceEvents": self.chrome_events(), "displayTimeUnit": "ns"}

    def write_chrome(self, path: str | os.PathLike[str]) -> None:
        with open(path, "w") as f:
            json.dump(self.to_chrome(), f)


trace = Tracer()


# -- helpers called by the model (each call site is already guarded by `if ON:`) -----------
def _msg_name(msg: Any) -> str:
    return type(msg).__name__


def channel_event(kind: str, channel: Any, value: Any) -> None:
    trace.emit("chan-" + kind, _task_name(), channel.name or hex(id(channel)), _msg_name(value))


def send_event(actor: str, msg: Any) -> int:
    flow = next(_flow_ids)
    trace.emit("send", _task_name(), actor, _msg_name(msg), None, flow)
    return flow


def turn_begin(actor: str, msg: Any, flow: int | None) -> None:
    trace.emit("receive", actor, _task_name(), _msg_name(msg), None, flow)


def turn_end(actor: str, outcome: str) -> None:
    trace.emit("reply", actor, None, None, outcome)


def actor_event(kind: str, actor: str, detail: str | None = None) -> None:
    trace.emit(kind, actor, _task_name(), None, detail)
