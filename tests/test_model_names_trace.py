"""Name registry and tracing (Chrome trace-event output)."""

from __future__ import annotations

import collections
import json
from pathlib import Path
from typing import Any

import pytest
import trio
from chanos.personality import (
    Actor,
    CallError,
    Channel,
    ChildSpec,
    TraceEvent,
    call,
    cast,
    open_supervisor,
    register,
    registered,
    trace,
    unregister,
    whereis,
)


class Echo(Actor):
    async def handle(self, msg: Any) -> Any:
        if msg == "crash":
            raise ValueError("crash")
        if msg == "nap":
            await trio.lowlevel.checkpoint()
        return msg


async def test_register_whereis_unregister() -> None:
    async with open_supervisor() as sup:
        ref = await sup.start(ChildSpec("echo", Echo))
        ch = Channel(1)
        assert whereis("echo") is None
        register("echo", ref)
        register("pipe", ch)
        assert whereis("echo") is ref
        assert whereis("pipe") is ch
        with pytest.raises(ValueError):
            register("echo", ch)
        with pytest.raises(TypeError):
            register("bad", object())  # type: ignore[arg-type]
        assert await call(whereis("echo"), "hi") == "hi"
        assert set(registered()) == {"echo", "pipe"}
        unregister("pipe")
        unregister("pipe")  # no error
        assert whereis("pipe") is None
        # A dead actor's name is released.
        await ref.stop()
        assert whereis("echo") is None
        ref2 = await sup.start(ChildSpec("echo2", Echo))
        register("echo", ref2)
        assert whereis("echo") is ref2


async def test_registry_is_per_run() -> None:
    # Each test is its own trio run; names from other tests are not visible.
    assert registered() == {}


@pytest.fixture
def tracing() -> Any:
    trace.clear()
    trace.enable()
    yield trace
    trace.disable()
    trace.clear()


async def test_trace_records_model_events(tracing: Any, tmp_path: Path) -> None:
    seen: list[TraceEvent] = []
    trace.add_hook(seen.append)
    async with open_supervisor(name="traced") as sup:
        ref = await sup.start(ChildSpec("echo", Echo))
        await call(ref, "a")
        await call(ref, "nap")
        cast(ref, "b")
        await call(ref, "c")
        with pytest.raises(CallError):
            await call(ref, "crash")
        await call(ref, "after")
        ch = Channel(1, name="pipe")
        await ch.send(1)
        await ch.receive()
    trace.remove_hook(seen.append)
    kinds = collections.Counter(e.kind for e in trace.events)
    for kind in ("spawn", "send", "receive", "reply", "crash", "restart", "exit"):
        assert kinds[kind] >= 1, kind
    assert kinds["send"] == kinds["receive"] == 6  # a, nap, b, c, crash, after
    assert kinds["chan-send"] == kinds["chan-receive"] == 1
    assert len(seen) == len(trace.events)

    path = tmp_path / "run.trace.json"
    trace.write_chrome(path)
    doc = json.loads(path.read_text())
    events = doc["traceEvents"]
    names = {e["args"]["name"] for e in events if e["ph"] == "M"}
    assert "echo" in names
    # Slices balance per track, and every flow start has its finish on the actor's track.
    depth: dict[int, int] = collections.defaultdict(int)
    for e in events:
        if e["ph"] == "B":
            depth[e["tid"]] += 1
        elif e["ph"] == "E":
            depth[e["tid"]] -= 1
            assert depth[e["tid"]] >= 0
    assert all(d == 0 for d in depth.values())
    starts = {e["id"] for e in events if e["ph"] == "s"}
    finishes = {e["id"] for e in events if e["ph"] == "f"}
    assert starts == finishes and len(starts) == 6
    assert all(isinstance(e.get("ts", 0.0), float) for e in events)


async def test_trace_off_records_nothing() -> None:
    trace.clear()
    assert not trace.enabled
    async with open_supervisor() as sup:
        ref = await sup.start(ChildSpec("echo", Echo))
        await call(ref, "x")
        cast(ref, "y")
    assert trace.events == []


async def test_trace_recording_context(tmp_path: Path) -> None:
    path = tmp_path / "t.json"
    async with open_supervisor() as sup:
        ref = await sup.start(ChildSpec("echo", Echo))
        with trace.recording(path):
            await call(ref, "x")
        assert not trace.enabled
    assert json.loads(path.read_text())["traceEvents"]
    trace.clear()


async def test_debug_views_show_turns_and_waits() -> None:
    from chanos.personality.debug import supervisor_tree, task_tree

    class Holder(Actor):
        async def handle(self, msg: Any) -> Any:
            await msg.wait()
            return "released"

    async with open_supervisor(name="dbg") as sup:
        ref = await sup.start(ChildSpec("holder", Holder))
        ev = trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(call, ref, ev, name="first-caller")
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(call, ref, ev, name="second-caller")
            await trio.testing.wait_all_tasks_blocked()
            tasks = task_tree()
            actors = supervisor_tree(sup)
            ev.set()
    # The first caller runs the holder's turn inline: the view goes into the handler.
    assert "[turn of holder]" in tasks
    assert "handle (test_model_names_trace.py" in tasks
    assert "second-caller  <queued on holder>" in tasks
    assert "holder: busy, 1 queued, turn in task 'first-caller'" in actors
