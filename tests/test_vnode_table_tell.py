"""``tell``: one-way messages to the vnode table, inline when it is idle, never lost."""

from __future__ import annotations

import logging

import trio
import trio.testing
from chanos.fs.vnode_table import tell
from chanos.personality import Actor, ChildSpec, call, open_supervisor


class Recorder(Actor):
    def __init__(self, log: list) -> None:
        self.log = log

    async def handle(self, msg: object) -> object:
        match msg:
            case "crash":
                raise RuntimeError("boom")
            case ("block", event):
                await event.wait()
                self.log.append(msg)
            case "get":
                return list(self.log)
            case _:
                self.log.append(msg)
        return None


async def test_tell_runs_inline_when_idle_and_queues_otherwise(caplog) -> None:
    seen: list = []
    async with open_supervisor(name="t") as sup:
        ref = await sup.start(ChildSpec(name="rec", factory=lambda: Recorder(seen)))
        # Idle: delivered by the time tell returns, with no scheduling in between.
        await tell(ref, "a")
        assert seen == ["a"]
        # A cancelled caller: no call can start, the message is cast instead.
        with trio.CancelScope() as cs:
            cs.cancel()
            await tell(ref, "b")
        await call(ref, "get")
        assert seen == ["a", "b"]
        # Busy: queued behind the running turn, in order, without waiting for it.
        go = trio.Event()
        async with trio.open_nursery() as n:
            n.start_soon(call, ref, ("block", go))
            await trio.testing.wait_all_tasks_blocked()
            with trio.move_on_after(5) as timer:
                await tell(ref, "c")
            assert not timer.cancelled_caught  # did not wait for the blocked turn
            assert seen == ["a", "b"]
            go.set()
        assert await call(ref, "get") == ["a", "b", ("block", go), "c"]
        # A crash on the message is logged, not raised to the teller.
        with caplog.at_level(logging.ERROR, logger="chanos.fs.vnode_table"):
            await tell(ref, "crash")
        assert "vnode table failed on str" in caplog.text
        await ref.stop()
