"""Actors and calls: replies, errno errors, crashes, ordering, stop/retire, cancellation."""

from __future__ import annotations

import errno
from dataclasses import dataclass
from typing import Any

import pytest
import trio
import trio.testing
from chanos.personality import (
    TEMPORARY,
    Actor,
    ActorDied,
    CallCycle,
    CallError,
    Channel,
    ChildSpec,
    Request,
    call,
    cast,
    open_scope,
    open_supervisor,
)
from chanos.personality.actor import shielded
from hypothesis import given, settings
from hypothesis import strategies as st


@dataclass(frozen=True, slots=True)
class Add:
    n: int


@dataclass(frozen=True, slots=True)
class Get:
    pass


@dataclass(frozen=True, slots=True)
class Fail:
    err: int


@dataclass(frozen=True, slots=True)
class Crash:
    pass


@dataclass(frozen=True, slots=True)
class Block:
    """Add 1, wait on the event, add 1 again (a turn that blocks half-way)."""

    event: trio.Event


@dataclass(frozen=True, slots=True)
class Sleep:
    seconds: float


@pytest.mark.parametrize("when", ["before", "while blocked"])
async def test_shielded_runs_to_the_end_for_a_cancelled_caller(when) -> None:
    """``shielded`` is a shield: calls made inside are delivered and the body finishes,
    whether the caller was cancelled before (a call made inline would otherwise not
    deliver) or while the body blocked; the cancellation is seen afterwards."""
    async with open_supervisor() as sup:
        ref = await sup.start(ChildSpec("c", Counter))

        async def body() -> str:
            await call(ref, Add(1))
            await trio.sleep(0.02)
            await call(ref, Add(2))
            return "done"

        with trio.CancelScope() as cs:
            if when == "before":
                cs.cancel()
            else:
                cs.deadline = trio.current_time() + 0.005
            assert await shielded(body()) == "done"
            await trio.lowlevel.checkpoint()
        assert cs.cancelled_caught
        assert await call(ref, Get()) == 3


@dataclass(frozen=True, slots=True)
class Timed:
    """Wait on an event with the handler's own timeout."""

    event: trio.Event
    timeout: float


@dataclass(frozen=True, slots=True)
class Log:
    tag: Any
    blocking: bool = False


@dataclass(frozen=True, slots=True)
class CallOther:
    other: Any
    msg: Any


class Counter(Actor):
    instances = 0

    def __init__(self) -> None:
        Counter.instances += 1
        self.n = 0
        self.log: list[Any] = []
        self.inside = False
        self.stopped_calls = 0

    async def handle(self, msg: Any) -> Any:
        assert not self.inside, "two turns overlapped"
        self.inside = True
        try:
            match msg:
                case Add(n=n):
                    self.n += n
                    return self.n
                case Get():
                    return self.n
                case Fail(err=e):
                    raise OSError(e, "requested failure")
                case Crash():
                    raise ValueError("requested crash")
                case Block(event=ev):
                    self.n += 1
                    await ev.wait()
                    self.n += 1
                    return self.n
                case Sleep(seconds=s):
                    self.n += 1
                    await trio.sleep(s)
                    self.n += 1
                    return self.n
                case Timed(event=ev, timeout=t):
                    with trio.move_on_after(t) as cs:
                        await ev.wait()
                    return "timed out" if cs.cancelled_caught else "woken"
                case Log(tag=tag, blocking=b):
                    if b:
                        await trio.lowlevel.checkpoint()
                    self.log.append(tag)
                    return len(self.log)
                case CallOther(other=other, msg=m):
                    return await call(other, m)
                case _:
                    raise TypeError(f"unknown message {msg!r}")
        finally:
            self.inside = False

    async def stopped(self) -> None:
        self.stopped_calls += 1
        STOPPED.append(self)


STOPPED: list[Counter] = []


def instance(ref: Any) -> Counter:
    """The live instance behind a ref (test-only peek)."""
    return ref._cell.actor


async def test_call_reply_and_state() -> None:
    async with open_supervisor() as sup:
        ref = await sup.start(ChildSpec("c", Counter))
        assert await call(ref, Add(2)) == 2
        assert await call(ref, Add(3)) == 5
        assert await ref.call(Get()) == 5
        assert ref.idle and ref.alive and ref.name == "c"


async def test_oserror_is_a_reply_actor_keeps_state() -> None:
    async with open_supervisor() as sup:
        ref = await sup.start(ChildSpec("c", Counter))
        await call(ref, Add(7))
        with pytest.raises(OSError) as info:
            await call(ref, Fail(errno.ENOSPC))
        assert info.value.errno == errno.ENOSPC
        assert not isinstance(info.value, CallError)
        assert await call(ref, Get()) == 7
        assert sup.restarts == 0


async def test_crash_gives_callerror_and_fresh_restart_same_ref() -> None:
    async with open_supervisor() as sup:
        ref = await sup.start(ChildSpec("c", Counter))
        await call(ref, Add(7))
        before = Counter.instances
        with pytest.raises(CallError) as info:
            await call(ref, Crash())
        assert isinstance(info.value.cause, ValueError)
        assert not isinstance(info.value, ActorDied)
        # The restart happens in the supervisor's task; calls made meanwhile wait for it.
        assert await call(ref, Get()) == 0
        assert Counter.instances == before + 1
        assert sup.restarts == 1


async def test_blocking_crash_in_queued_turn() -> None:
    """A crash in a turn run by a woken (queued) caller gives that caller CallError."""
    async with open_supervisor() as sup:
        ref = await sup.start(ChildSpec("c", Counter))
        ev = trio.Event()
        results: dict[str, Any] = {}

        async def first() -> None:
            results["first"] = await call(ref, Block(ev))

        async def second() -> None:
            try:
                await call(ref, Crash())
            except CallError as e:
                results["second"] = type(e.cause)

        async with open_scope() as scope:
            scope.start(first)
            await trio.testing.wait_all_tasks_blocked()
            scope.start(second)
            await trio.testing.wait_all_tasks_blocked()
            ev.set()
        assert results == {"first": 2, "second": ValueError}


class Boom(Counter):
    """Its Sleep turn blocks, then crashes."""

    async def handle(self, msg: Any) -> Any:
        if isinstance(msg, Sleep):
            await trio.sleep(msg.seconds)
            raise ValueError("boom while others wait")
        return await super().handle(msg)


async def test_queued_requests_get_actordied_on_crash() -> None:
    async with open_supervisor() as sup:
        ref = await sup.start(ChildSpec("boom", Boom))
        outcomes: list[str] = []

        async def crasher() -> None:
            with pytest.raises(CallError) as info:
                await call(ref, Sleep(0.05))
            assert not isinstance(info.value, ActorDied)

        async def queued(i: int) -> None:
            try:
                await call(ref, Add(i))
                outcomes.append("ok")
            except ActorDied as e:
                assert isinstance(e.cause, ValueError)
                outcomes.append("died")

        with trio.fail_after(2):
            async with open_scope() as scope:
                scope.start(crasher)
                await trio.testing.wait_all_tasks_blocked()
                for i in range(3):
                    scope.start(queued, i)
                await trio.testing.wait_all_tasks_blocked()
        assert outcomes == ["died"] * 3
        assert await call(ref, Get()) == 0  # restarted, fresh


async def test_stopped_actor_fails_promptly() -> None:
    STOPPED.clear()
    async with open_supervisor() as sup:
        ref = await sup.start(ChildSpec("c", Counter))
        await call(ref, Add(1))
        await ref.stop()
        assert not ref.alive and ref.state == "dead"
        assert len(STOPPED) == 1
        with trio.fail_after(1):
            with pytest.raises(ActorDied):
                await call(ref, Get())
        assert cast(ref, Add(1)) is False
        await ref.stop()  # idempotent
        assert len(STOPPED) == 1
        assert sup.children == []


async def test_stop_finishes_current_message_fails_queue() -> None:
    STOPPED.clear()
    async with open_supervisor() as sup:
        ref = await sup.start(ChildSpec("c", Counter))
        ev = trio.Event()
        got: dict[str, Any] = {}

        async def current() -> None:
            got["current"] = await call(ref, Block(ev))

        async def queued() -> None:
            try:
                await call(ref, Add(100))
            except ActorDied:
                got["queued"] = "died"

        async def stopper() -> None:
            await ref.stop()
            got["stopped"] = len(STOPPED)

        async with open_scope() as scope:
            scope.start(current)
            await trio.testing.wait_all_tasks_blocked()
            scope.start(queued)
            await trio.testing.wait_all_tasks_blocked()
            scope.start(stopper)
            await trio.testing.wait_all_tasks_blocked()
            assert "stopped" not in got  # waits for the current message
            ev.set()
        assert got == {"current": 2, "queued": "died", "stopped": 1}


async def test_retire_only_when_idle() -> None:
    async with open_supervisor() as sup:
        ref = await sup.start(ChildSpec("c", Counter, TEMPORARY))
        ev = trio.Event()
        async with open_scope() as scope:
            scope.start(call, ref, Block(ev))
            await trio.testing.wait_all_tasks_blocked()
            assert not ref.idle
            assert await ref.retire() is False
            assert ref.alive
            ev.set()
        assert ref.idle
        assert await ref.retire() is True
        assert not ref.alive
        assert len(sup) == 0


async def test_caller_cancelled_while_turn_blocks_handler_finishes() -> None:
    async with open_supervisor() as sup:
        ref = await sup.start(ChildSpec("c", Counter))
        ev = trio.Event()
        seen: list[Any] = []

        async def caller(cs_holder: list[trio.CancelScope]) -> None:
            with trio.CancelScope() as cs:
                cs_holder.append(cs)
                seen.append(await call(ref, Block(ev)))
                await trio.lowlevel.checkpoint()
                seen.append("not cancelled?")
            seen.append(cs.cancelled_caught)

        holder: list[trio.CancelScope] = []
        async with open_scope() as scope:
            scope.start(caller, holder)
            await trio.testing.wait_all_tasks_blocked()
            holder[0].cancel()  # the caller is cancelled while the turn is blocked
            await trio.testing.wait_all_tasks_blocked()
            assert instance(ref).n == 1  # still half-way, not abandoned
            ev.set()
        # The turn completed (both halves ran), the reply was returned to the cancelled
        # caller, and the cancellation was delivered at its next checkpoint.
        assert seen == [2, True]
        assert await call(ref, Get()) == 2
        assert ref.idle


async def test_caller_cancelled_while_handler_sleeps_inside_its_own_scope() -> None:
    """trio.sleep opens a cancel scope before blocking: the shield goes under it."""
    async with open_supervisor() as sup:
        ref = await sup.start(ChildSpec("c", Counter))
        with trio.move_on_after(0.01) as cs:
            result = await call(ref, Sleep(0.05))
        assert result == 2
        assert not cs.cancelled_caught
        assert await call(ref, Get()) == 2
        # The handler's own timeouts still work inside a shielded turn.
        with trio.move_on_after(0.01):
            assert await call(ref, Timed(trio.Event(), 0.03)) == "timed out"
        assert await call(ref, Timed(trio.Event(), 0.001)) == "timed out"


async def test_already_cancelled_caller_does_not_deliver() -> None:
    async with open_supervisor() as sup:
        ref = await sup.start(ChildSpec("c", Counter))
        with trio.CancelScope() as cs:
            cs.cancel()
            await call(ref, Add(5))
        assert cs.cancelled_caught
        assert await call(ref, Get()) == 0


async def test_cancelled_while_queued_is_never_delivered() -> None:
    async with open_supervisor() as sup:
        ref = await sup.start(ChildSpec("c", Counter))
        ev = trio.Event()
        async with open_scope() as scope:
            scope.start(call, ref, Block(ev))
            await trio.testing.wait_all_tasks_blocked()
            with trio.move_on_after(0.01) as cs:
                await call(ref, Add(100))
            assert cs.cancelled_caught
            ev.set()
        assert await call(ref, Get()) == 2  # the Add(100) never ran


async def test_one_turn_at_a_time_and_per_sender_order() -> None:
    async with open_supervisor() as sup:
        ref = await sup.start(ChildSpec("c", Counter))

        async def sender(sid: int) -> None:
            for i in range(30):
                if i % 3 == 0:
                    cast(ref, Log((sid, i), blocking=True))
                else:
                    await call(ref, Log((sid, i), blocking=i % 2 == 0))

        async with open_scope() as scope:
            for sid in range(4):
                scope.start(sender, sid)
        await call(ref, Get())  # behind any remaining casts
        log = instance(ref).log
        assert len(log) == 120
        for sid in range(4):
            mine = [i for s, i in log if s == sid]
            assert mine == list(range(30))


async def test_casts_run_in_order_without_a_caller() -> None:
    async with open_supervisor() as sup:
        ref = await sup.start(ChildSpec("c", Counter))
        for i in range(200):
            assert cast(ref, Log(i, blocking=i % 7 == 0))
        # Wait for the drain task, without calling the actor.
        while not ref.idle:
            await trio.sleep(0.001)
        assert instance(ref).log == list(range(200))


async def test_cast_oserror_logged_actor_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    async with open_supervisor() as sup:
        ref = await sup.start(ChildSpec("c", Counter))
        cast(ref, Fail(errno.EIO))
        cast(ref, Add(1))
        assert await call(ref, Get()) == 1
        assert sup.restarts == 0
    assert any("cast Fail failed" in r.message for r in caplog.records)


async def test_cast_crash_restarts() -> None:
    async with open_supervisor() as sup:
        ref = await sup.start(ChildSpec("c", Counter))
        await call(ref, Add(3))
        cast(ref, Crash())
        await trio.testing.wait_all_tasks_blocked()
        assert await call(ref, Get()) == 0
        assert sup.restarts == 1


async def test_call_cycles_fail_instead_of_deadlocking() -> None:
    async with open_supervisor() as sup:
        a = await sup.start(ChildSpec("a", Counter))
        b = await sup.start(ChildSpec("b", Counter))
        # a -> a
        with pytest.raises(CallError) as info:
            await call(a, CallOther(a, Get()))
        assert isinstance(info.value.cause, CallCycle)
        # a -> b -> a: b's turn crashes with CallCycle, a's turn gets CallError from b.
        with pytest.raises(CallError):
            await call(a, CallOther(b, CallOther(a, Get())))
        # a -> b (no cycle) works
        assert await call(a, CallOther(b, Add(4))) == 4


async def test_started_failure_propagates_from_start() -> None:
    class Bad(Actor):
        async def started(self) -> None:
            raise RuntimeError("cannot start")

        async def handle(self, msg: Any) -> Any:
            return None

    async with open_supervisor() as sup:
        with pytest.raises(RuntimeError, match="cannot start"):
            await sup.start(ChildSpec("bad", Bad))
        assert sup.children == []


async def test_call_over_plain_channel() -> None:
    ch: Channel = Channel(name="server")

    async def server() -> None:
        async for req in ch:
            assert isinstance(req, Request)
            match req.msg:
                case Add(n=n):
                    req.respond(n * 2)
                case Fail(err=e):
                    req.fail(OSError(e, "no"))
                case Crash():
                    req.fail(ValueError("bad"))
                case _:
                    req.reply.close()

    async with open_scope() as scope:
        scope.start(server)
        assert await call(ch, Add(21)) == 42
        with pytest.raises(OSError) as info:
            await call(ch, Fail(errno.EBADF))
        assert info.value.errno == errno.EBADF
        with pytest.raises(CallError) as info2:
            await call(ch, Crash())
        assert isinstance(info2.value.cause, ValueError)
        with pytest.raises(ActorDied):
            await call(ch, Get())
        ch.close()


async def test_refs_travel_through_channels() -> None:
    async with open_supervisor() as sup:
        ref = await sup.start(ChildSpec("c", Counter))
        ch: Channel = Channel(1)
        await ch.send(ref)
        assert await call(await ch.receive(), Add(9)) == 9


# -- property: random mixes of calls and casts from several tasks --------------------------


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.lists(st.tuples(st.sampled_from(["call", "cast", "crash"]), st.booleans()), max_size=12),
        min_size=1,
        max_size=4,
    )
)
def test_random_traffic_order_and_no_hang(plan: list[list[tuple[str, bool]]]) -> None:
    async def main() -> None:
        async with open_supervisor(max_restarts=1000, within=1.0) as sup:
            ref = await sup.start(ChildSpec("c", Counter))
            delivered: list[tuple[int, int]] = []  # (sender, seq) whose call returned
            crashes = 0

            async def sender(sid: int, ops: list[tuple[str, bool]]) -> None:
                nonlocal crashes
                for seq, (kind, blocking) in enumerate(ops):
                    if kind == "cast":
                        cast(ref, Log((sid, seq), blocking))
                    elif kind == "call":
                        try:
                            await call(ref, Log((sid, seq), blocking))
                            delivered.append((sid, seq))
                        except ActorDied:
                            pass
                    else:
                        try:
                            await call(ref, Crash())
                        except ActorDied:
                            pass
                        except CallError:
                            crashes += 1

            with trio.fail_after(10):
                async with open_scope() as scope:
                    for sid, ops in enumerate(plan):
                        scope.start(sender, sid, ops)
                await call(ref, Get())
            assert sup.restarts == crashes
            # Every acknowledged call was logged by the instance alive when it returned, or
            # by an earlier one (lost on crash); what the live instance logged is in order.
            log = instance(ref).log
            for sid in range(len(plan)):
                mine = [s for t, s in log if t == sid]
                assert mine == sorted(mine)
            if crashes == 0:
                assert set(delivered) <= {tuple(x) for x in log}

    trio.run(main)


# -- property: cancellations and crashes never leave a turn half-way ----------------------


@dataclass(frozen=True, slots=True)
class Work:
    ident: tuple[int, int]
    blocks: int
    crash: bool


class Worker(Actor):
    """Logs begin/end of every turn into a log that survives restarts."""

    def __init__(self, log: list[tuple[str, Any]]) -> None:
        self.log = log

    async def handle(self, msg: Any) -> Any:
        self.log.append(("begin", msg.ident))
        for i in range(msg.blocks):
            if i % 2:
                await trio.lowlevel.checkpoint()
            else:
                await trio.sleep(0.4)  # time passes: callers' deadlines fire mid-turn
        if msg.crash:
            self.log.append(("crash", msg.ident))
            raise RuntimeError("crash")
        self.log.append(("end", msg.ident))
        return msg.ident


work_op = st.tuples(
    st.integers(0, 3),  # blocking points inside the turn
    st.booleans() | st.just(False),  # crash (rarer)
    st.one_of(st.none(), st.floats(0, 3)),  # caller's cancel deadline
    st.sampled_from(["call", "call", "cast"]),
    st.integers(0, 2),  # checkpoints before the operation
)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.lists(work_op, max_size=8), min_size=1, max_size=4))
def test_turns_are_atomic_under_cancellation_and_crashes(plan: list[list[Any]]) -> None:
    log: list[tuple[str, Any]] = []
    returned: set[tuple[int, int]] = set()
    crashed: set[tuple[int, int]] = set()
    casts: set[tuple[int, int]] = set()

    async def main() -> None:
        async with open_supervisor(max_restarts=10_000, within=1.0) as sup:
            ref = await sup.start(ChildSpec("w", lambda: Worker(log)))

            async def sender(sid: int, ops: list[Any]) -> None:
                for seq, (blocks, crash, deadline, kind, pre) in enumerate(ops):
                    for _ in range(pre):
                        await trio.lowlevel.checkpoint()
                    msg = Work((sid, seq), blocks, crash)
                    if kind == "cast":
                        if cast(ref, msg):
                            casts.add(msg.ident)
                        continue
                    with trio.CancelScope() as cs:
                        if deadline is not None:
                            cs.deadline = trio.current_time() + deadline
                        try:
                            assert await call(ref, msg) == msg.ident
                            returned.add(msg.ident)
                        except ActorDied:
                            pass
                        except CallError as e:
                            assert isinstance(e.cause, RuntimeError)
                            crashed.add(msg.ident)

            async with open_scope() as scope:
                for sid, ops in enumerate(plan):
                    scope.start(sender, sid, ops)
            with trio.fail_after(100):
                while not ref.idle:  # let the casts run
                    await trio.sleep(1)

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))

    # Turns never overlap and never stop half-way: begin X is followed by end X or crash X.
    assert len(log) % 2 == 0
    for (k1, a), (k2, b) in zip(log[::2], log[1::2], strict=True):
        assert k1 == "begin" and k2 in ("end", "crash") and a == b, log
    ended = {i for k, i in log if k == "end"}
    crashes = {i for k, i in log if k == "crash"}
    # A call returned exactly when its turn ran to the end; a call saw CallError exactly
    # when its own turn crashed; nothing else ran (cancelled-before-turn and ActorDied
    # requests were never delivered).
    assert ended - casts == returned
    assert crashes - casts == crashed
    # Per-sender order.
    for sid in range(len(plan)):
        seqs = [i[1] for k, i in log if k == "begin" and i[0] == sid]
        assert seqs == sorted(seqs)


async def test_portable_call_path_same_semantics() -> None:
    """The fallback used when trio's internals differ keeps the same semantics."""
    from chanos.personality.actor import _call_portable

    async with open_supervisor() as sup:
        ref = await sup.start(ChildSpec("c", Counter))
        assert await _call_portable(ref, Add(2)) == 2
        with pytest.raises(OSError):
            await _call_portable(ref, Fail(errno.EIO))
        with trio.move_on_after(0.01):
            assert await _call_portable(ref, Sleep(0.03)) == 4  # finishes despite cancel
        with pytest.raises(CallError):
            await _call_portable(ref, Crash())
        assert await _call_portable(ref, Get()) == 0
        with trio.CancelScope() as cs:
            cs.cancel()
            await _call_portable(ref, Add(1))
        assert await call(ref, Get()) == 0


async def test_caller_cancelled_while_handler_waits_on_its_own_nursery(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The handler opens a nursery (a cancel scope with child tasks) before it blocks; the
    caller's cancellation must reach neither the handler nor the nursery's children.
    (Virtual time: the parts' sleeps must end in order however loaded the machine is.)"""

    class Fanout(Actor):
        def __init__(self) -> None:
            self.done: list[int] = []

        async def handle(self, msg: Any) -> Any:
            async def part(i: int) -> None:
                await trio.sleep(0.01 * (i + 1))
                self.done.append(i)

            async with trio.open_nursery() as nursery:
                for i in range(3):
                    nursery.start_soon(part, i)
            return len(self.done)

    async with open_supervisor() as sup:
        ref = await sup.start(ChildSpec("fan", Fanout))
        with trio.move_on_after(0.005):
            assert await call(ref, "go") == 3
        assert instance(ref).done == [0, 1, 2]
        assert ref.idle


async def test_cross_task_call_cycle_fails_instead_of_deadlocking() -> None:
    """A's turn (in task 1) waits for B while B's turn (in task 2) waits for A: the call
    that closes the loop raises CallCycle; nothing hangs."""

    @dataclass(frozen=True, slots=True)
    class After:
        event: trio.Event
        other: Any

    class Relay(Actor):
        async def handle(self, msg: Any) -> Any:
            match msg:
                case After(event=ev, other=other):
                    await ev.wait()
                    try:
                        return await call(other, "ping")
                    except CallCycle as e:
                        return e.cycle
                    except ActorDied:
                        return "died"
                case "ping":
                    return "pong"

    async with open_supervisor() as sup:
        a = await sup.start(ChildSpec("a", Relay))
        b = await sup.start(ChildSpec("b", Relay))
        ev_a, ev_b = trio.Event(), trio.Event()
        got: dict[str, Any] = {}

        async def run(tag: str, ref: Any, msg: Any) -> None:
            got[tag] = await call(ref, msg)

        with trio.fail_after(5):
            async with open_scope() as scope:
                scope.start(run, "a", a, After(ev_a, b))
                scope.start(run, "b", b, After(ev_b, a))
                await trio.testing.wait_all_tasks_blocked()
                ev_b.set()  # b's turn now waits for a (busy in task 1): queued, no loop yet
                await trio.testing.wait_all_tasks_blocked()
                ev_a.set()  # a's turn calls b: b waits for a -> loop
        assert got["a"] == ["b", "a", "b"]
        # a's turn ended normally, so b's queued call to a then ran: "pong".
        assert got["b"] == "pong"


async def test_caller_cancelled_follows_the_effective_cancel_state():
    from chanos.personality.actor import caller_cancelled

    assert not caller_cancelled()
    with trio.CancelScope() as outer:
        outer.cancel()
        assert caller_cancelled()
        with trio.CancelScope(shield=True):
            assert not caller_cancelled()  # a shielded turn delivers its calls
        assert caller_cancelled() == (trio.current_effective_deadline() == -float("inf"))
    assert not caller_cancelled()


class SlowStop(Actor):
    """stopped() blocks (as a vnode's write-back does when it has something to write)."""

    def __init__(self, log: list[str], blocks: str) -> None:
        self.log = log
        self.blocks = blocks

    async def handle(self, msg: Any) -> Any:
        return msg

    async def stopped(self) -> None:
        self.log.append("stopping")
        if self.blocks == "blocks":
            await trio.sleep(0.01)
            await trio.lowlevel.checkpoint()
        elif self.blocks == "blocks in its own scope":
            with trio.move_on_after(10) as own:
                await trio.sleep(0.01)
            assert not own.cancelled_caught
        self.log.append("stopped")


@pytest.mark.parametrize("blocks", ["never blocks", "blocks", "blocks in its own scope"])
@pytest.mark.parametrize("how", ["stop", "retire"])
async def test_stop_from_a_cancelled_caller_runs_stopped_to_the_end(blocks, how) -> None:
    log: list[str] = []
    async with open_supervisor() as sup:
        ref = await sup.start(ChildSpec("s", lambda: SlowStop(log, blocks), TEMPORARY))
        with trio.CancelScope() as cs:
            cs.cancel()  # cancelled before the stop: the stop is shielded all the same
            await (ref.stop() if how == "stop" else ref.retire())
            log.append("back")  # the stop itself is no checkpoint
            await trio.lowlevel.checkpoint()
            log.append("not cancelled?")
        assert cs.cancelled_caught
        assert log == ["stopping", "stopped", "back"]
        assert not ref.alive
