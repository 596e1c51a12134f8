"""Actors, their addresses, and calls.

An actor owns its state and takes one message at a time from its mailbox. What an actor
costs is the point of this module: the file system keeps one actor per active vnode, up to
100,000 of them, and every system call is a few calls between actors.

How an actor runs (its *turns*):

- An actor does not own a task. Its runtime record (`_Cell`) holds the instance, a state,
  and a mailbox that exists only while messages wait. An idle actor is a few hundred bytes.
- `call` to an idle actor runs the turn *inline*, in the caller's task: the actor is marked
  busy, the handler coroutine is stepped by hand (`coro.send(None)`). A handler that
  completes without blocking is answered at the cost of a few attribute writes.
- A handler that blocks yields a trio trap; the caller re-yields it from inside a shielded
  cancel scope inserted *under* the handler's own scopes (see `_shield_under`), so a
  cancelled caller never leaves the actor half-way through a message: the turn finishes,
  the reply is returned, and the cancellation is seen at the caller's next checkpoint.
- While an actor is busy, calls queue an envelope and park. When a turn ends, the next
  queued caller is woken and runs its own turn in its own task (the turn is handed over
  like a baton); casts at the head of the mailbox are run by a short-lived drain task in
  the supervisor's nursery, which exits once the mailbox is empty or a caller takes over.
- Ordering: exactly one turn runs at a time, messages in mailbox order.
- Deadlocks: before parking, a call follows the wait-for graph (busy actor -> task running
  its turn -> actor that task is queued on); if it leads back to the caller's own task the
  call raises `CallCycle` instead of waiting forever.
- Killing an actor (its supervisor failing or timing out its shutdown) cancels the shield
  of a turn blocked inline: the turn is aborted and its caller gets `ActorDied`.

Errors: a handler raising `OSError` answers the caller with that error (an errno-valued
reply); the actor goes on. Any other exception is a crash: the caller gets `CallError`
(cause attached), queued requests get `ActorDied`, and the supervisor restarts the actor
from fresh state (the same `ActorRef` keeps working). Calls to a stopped actor fail with
`ActorDied` at once.

Retiring idle actors (the hook the vnode table uses): `ref.idle` is True when no turn runs
and no message waits; `await ref.retire()` stops the actor only if it is idle at that
moment (running `stopped()`), returning whether it did; `await ref.stop()` always stops it
after its current message.
"""

from __future__ import annotations

import logging
import types
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import trio
from outcome import Error as _Error
from outcome import Value as _Value
from trio.lowlevel import Abort, checkpoint_if_cancelled, reschedule, wait_task_rescheduled

from . import tracing as _tr
from .channel import Channel, EndOfChannel

if TYPE_CHECKING:
    from .supervisor import ChildSpec, Supervisor

__all__ = [
    "Actor",
    "ActorDied",
    "ActorRef",
    "CallCycle",
    "CallError",
    "Request",
    "call",
    "caller_cancelled",
    "cast",
    "shielded",
]

log = logging.getLogger("chanos.personality")

try:  # the hot path reads the current task without the public wrapper's try/except
    from trio._core._run import GLOBAL_RUN_CONTEXT as _RUN

    def _current_task() -> Any:
        try:
            return _RUN.task
        except AttributeError:
            raise RuntimeError("must be called from inside trio") from None

except ImportError:  # pragma: no cover - other trio layouts
    _current_task = trio.lowlevel.current_task


# Cell states. IDLE must be 0: the hot path tests `if cell.state:`.
IDLE = 0  # no turn running, mailbox empty
BUSY = 1  # a turn is running, or the turn has been handed to a woken caller / drain task
RESTARTING = 2  # no instance (starting, crashed, or being restarted); calls queue
STOPPING = 3  # stopped() is running; calls fail with ActorDied
DEAD = 4  # gone for good; calls fail with ActorDied
_STATE_NAMES = ("idle", "busy", "restarting", "stopping", "dead")


class CallError(Exception):
    """A call failed because the callee crashed; `cause` is the callee's exception."""

    def __init__(self, cause: BaseException | None, message: str | None = None) -> None:
        self.cause = cause
        super().__init__(message or f"actor crashed: {cause!r}")


class ActorDied(CallError):
    """The callee is dead, stopping, or crashed while this request waited in its mailbox."""

    def __init__(self, actor: str, cause: BaseException | None = None) -> None:
        why = f" (crashed: {cause!r})" if cause is not None else ""
        super().__init__(cause, f"actor {actor} is dead{why}")
        self.actor = actor


class CallCycle(CallError):
    """A call that would deadlock: the callee's current turn is, directly or through a
    chain of calls waiting in other tasks, waiting for the turn this call is made from
    (A's turn calls A; A calls B while B's turn waits for A; ...). The call fails instead
    of waiting forever. `cycle` lists the actors around the loop."""

    def __init__(self, cycle: list[str]) -> None:
        super().__init__(None, "call cycle (deadlock): " + " -> ".join(cycle))
        self.actor = cycle[0]
        self.cycle = cycle


class Actor:
    """Base class of actors. Subclasses implement `handle`; `started` and `stopped` are
    optional. `__init__` builds fresh state and is called again on every restart.

    `self.ref` is the actor's own address (set before `started`).
    """

    ref: ActorRef

    async def started(self) -> None:
        """After (re)start, before the first message."""

    async def handle(self, msg: Any) -> Any:
        """One message; the return value is the reply. Dispatch with `match msg:`."""
        raise NotImplementedError

    async def stopped(self) -> None:
        """On explicit stop, retirement, or supervisor shutdown (not after a crash)."""

    def exit(self) -> None:
        """Request a normal exit after the current message (from inside `handle`).

        A PERMANENT child is restarted after a normal exit; TRANSIENT and TEMPORARY are not.
        """
        _request_marker(self.ref._cell, _EXIT)


class _Marker:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"<{self.name}>"


_STOP = _Marker("stop")  # final stop after the current message
_EXIT = _Marker("exit")  # normal exit requested by the actor itself
_QUIESCE = _Marker("quiesce")  # the supervisor takes the actor down for a restart
_GONE = _Marker("gone")  # killed while a turn ran: the turn's end must not revive it
_NOTHING = _Marker("nothing")


class _Env:
    """A call waiting in a mailbox. `task` is cleared when the caller gives up."""

    __slots__ = ("flow", "msg", "task")

    def __init__(self, msg: Any, task: Any, flow: int | None) -> None:
        self.msg = msg
        self.task = task
        self.flow = flow


class _Traced:
    """A cast recorded while tracing is on (carries its flow id)."""

    __slots__ = ("flow", "msg")

    def __init__(self, msg: Any, flow: int) -> None:
        self.msg = msg
        self.flow = flow


class _Cell:
    """An actor's runtime record. Lives as long as its ActorRef."""

    __slots__ = (
        "actor",
        "event",
        "gen",
        "mailbox",
        "name",
        "ref",
        "runner",
        "spec",
        "state",
        "sup",
        "turn_scope",
    )

    def __init__(self, name: str, spec: ChildSpec | None, sup: Supervisor) -> None:
        self.actor: Any = None
        self.state = RESTARTING
        self.mailbox: deque[Any] | None = None
        self.runner: Any = None  # the task running the current turn (cycle detection)
        self.sup = sup
        self.spec = spec
        self.name = name
        self.gen = 0  # bumped on every (re)start; supervisor events name the generation
        self.event: trio.Event | None = None  # set on state changes someone waits for
        # The shield of a blocked inline turn: cancelled if the actor is killed meanwhile.
        self.turn_scope: trio.CancelScope | None = None
        self.ref: ActorRef | None = ActorRef(self)  # dropped once dead (see _mark_dead)


class ActorRef:
    """An actor's address: a plain value, cheap to copy into messages and channels."""

    __slots__ = ("_cell",)

    def __init__(self, cell: _Cell) -> None:
        self._cell = cell

    @property
    def name(self) -> str:
        return self._cell.name

    @property
    def alive(self) -> bool:
        """False once stopped for good (or its supervisor gave up on it)."""
        return self._cell.state < STOPPING

    @property
    def idle(self) -> bool:
        """True when no turn runs and no message waits: safe to retire."""
        return self._cell.state == IDLE

    @property
    def state(self) -> str:
        return _STATE_NAMES[self._cell.state]

    def __repr__(self) -> str:
        return f"<ActorRef {self._cell.name} {_STATE_NAMES[self._cell.state]}>"

    async def call(self, msg: Any) -> Any:
        return await call(self, msg)

    def cast(self, msg: Any) -> bool:
        return cast(self, msg)

    async def stop(self) -> None:
        """Stop after the current message: queued requests get ActorDied, `stopped()` runs,
        then the actor is dead. Never restarted. Called from the actor's own turn, it only
        requests the stop (it happens when the turn ends)."""
        cell = self._cell
        while True:
            st = cell.state
            if st == DEAD:
                return
            if st == IDLE:
                cell.state = STOPPING
                await shielded(_finish_stop(cell, final=True))
                return
            if st == BUSY:
                _request_marker(cell, _STOP)
                if cell.runner is _current_task():
                    return  # called from the actor's own turn: stop when it ends
            elif st == RESTARTING:
                _mark_dead(cell, None)
                return
            ev = cell.event
            if ev is None:
                ev = cell.event = trio.Event()
            await ev.wait()

    async def retire(self) -> bool:
        """Stop the actor if it is idle right now (runs `stopped()`); True if it did."""
        cell = self._cell
        if cell.state != IDLE:
            return False
        cell.state = STOPPING
        await shielded(_finish_stop(cell, final=True))
        return True


# --------------------------------------------------------------------------------------
# call / cast
# --------------------------------------------------------------------------------------


async def call(ref: ActorRef | Channel, msg: Any) -> Any:
    """Send `msg` and wait for the reply.

    `ref` is an ActorRef (the fast path described in the module docstring) or a Channel
    served by a task that receives `Request` values (see `Request`).
    Raises the handler's OSError as is; CallError if the callee crashed on this message;
    ActorDied if it is dead or died with this message queued; CallCycle on a call cycle.
    """
    if type(ref) is not ActorRef:
        return await _call_channel(ref, msg)  # type: ignore[arg-type]
    cell = ref._cell
    task = _current_task()
    flow = None
    if cell.state:
        flow = await _wait_turn(cell, msg, task)
        if task._cancel_status.effectively_cancelled:
            # We hold the turn but a cancellation is pending: run it wholly shielded.
            return await _shielded_turn(cell, msg, flow)
    elif task._cancel_status.effectively_cancelled:
        await checkpoint_if_cancelled()  # raises Cancelled; the message was not delivered
    cell.state = BUSY
    cell.runner = task
    if _tr.ON:
        if flow is None:
            flow = _tr.send_event(cell.name, msg)
        _tr.turn_begin(cell.name, msg, flow)
    saved = task._cancel_status
    coro = cell.actor.handle(msg)
    try:
        trap = coro.send(None)
    except StopIteration as done:
        if cell.mailbox:
            _advance(cell, False)
        else:
            cell.state = IDLE
        if _tr.ON:
            _tr.turn_end(cell.name, "ok")
        return done.value
    except OSError:
        _turn_done(cell, "error")
        raise
    except Exception as exc:
        _crash(cell, exc)
        raise CallError(exc) from exc
    except BaseException as exc:
        _crash(cell, exc)
        raise
    return await _finish_turn(cell, coro, trap, task, saved)


async def _call_portable(ref: ActorRef | Channel, msg: Any) -> Any:
    """`call` using only trio's public API: every turn runs in a shielded scope (a few
    microseconds more). Used if the trio internals the inline path needs are missing."""
    if type(ref) is not ActorRef:
        return await _call_channel(ref, msg)  # type: ignore[arg-type]
    cell = ref._cell
    flow = None
    if cell.state:
        flow = await _wait_turn(cell, msg, _current_task())
    else:
        await checkpoint_if_cancelled()
        if _tr.ON:
            flow = _tr.send_event(cell.name, msg)
    return await _shielded_turn(cell, msg, flow)


def _inline_supported() -> bool:
    try:
        from trio._core._run import CancelStatus, Task

        parent = CancelStatus.__dict__.get("parent")
        return (
            isinstance(parent, property)
            and parent.fset is not None
            and callable(getattr(Task, "_activate_cancel_status", None))
            and "_cancel_status" in {a.name for a in Task.__attrs_attrs__}  # type: ignore[attr-defined]
        )
    except Exception:  # pragma: no cover - depends on the trio version
        return False


def caller_cancelled() -> bool:
    """Whether the current task is cancelled: a `call` from it would raise Cancelled
    without delivering the message. For code that calls an idle actor and must not lose
    a one-way message (it casts instead). O(1), where `trio.current_effective_deadline()`
    walks every enclosing cancel scope (each actor turn adds one)."""
    return _current_task()._cancel_status.effectively_cancelled


def _caller_cancelled_portable() -> bool:
    return trio.current_effective_deadline() == -float("inf")


if not _inline_supported():  # pragma: no cover - depends on the trio version
    log.warning("trio internals changed: actor calls use the portable (slower) path")
    call = _call_portable
    caller_cancelled = _caller_cancelled_portable


async def _shielded(coro: Any) -> Any:
    """Await ``coro`` immune to the caller's cancellation. It runs inline first: most
    never block (a vnode's ``stopped()`` with nothing to write back), and those need no
    cancel scope, which costs several microseconds to enter and leave. One that blocks
    goes on under a shield placed as a blocked turn's is (``_shield_under``)."""
    task = _current_task()
    saved = task._cancel_status
    try:
        trap = coro.send(None)
    except StopIteration as done:
        return done.value
    return await _drive_shielded(coro, trap, task, saved)


@types.coroutine
def _forward(coro: Any, trap: Any) -> Any:
    """Drive ``coro``, blocked on ``trap``, to its end: each trap goes up to trio and its
    answer (or exception) back down. Returns what ``coro`` returns, raises what it raises."""
    while True:
        exc = None
        try:
            sent = yield trap
        except BaseException as e:
            exc = e
        try:
            trap = coro.send(sent) if exc is None else coro.throw(exc)
        except StopIteration as done:
            return done.value


@types.coroutine
def _drive_shielded(coro: Any, trap: Any, task: Any, saved: Any) -> Any:
    shield = _shield_under(task, saved)
    try:
        result = yield from _forward(coro, trap)
    except BaseException as exc:
        if shield.__exit__(type(exc), exc, exc.__traceback__):
            return None
        raise
    shield.__exit__(None, None, None)
    return result


async def _shielded_portable(coro: Any) -> Any:
    with trio.CancelScope(shield=True):
        return await coro


if not _inline_supported():  # pragma: no cover - depends on the trio version
    _shielded = _shielded_portable


async def shielded(coro: Any) -> Any:
    """Await ``coro`` immune to the caller's cancellation, as inside
    ``trio.CancelScope(shield=True)``, without entering the scope unless ``coro``
    blocks (entering and leaving one costs several microseconds: a third of a FORGET's
    freeing). A caller already cancelled gets the scope at once: a ``call`` made inline
    would see the cancellation and not deliver its message."""
    if caller_cancelled():
        return await _shielded_portable(coro)
    return await _shielded(coro)


@types.coroutine
def _finish_turn(cell: _Cell, coro: Any, trap: Any, task: Any, saved: Any) -> Any:
    """Drive a handler that blocked, inside a shield placed under its own cancel scopes."""
    shield = cell.turn_scope = _shield_under(task, saved)
    try:
        result = yield from _forward(coro, trap)
    except BaseException as exc:
        cell.turn_scope = None
        if shield.cancel_called:
            # The actor was killed during this turn (the shield was cancelled): the caller
            # gets ActorDied; the Cancelled belongs to the shield and ends here.
            shield.__exit__(type(exc), exc, exc.__traceback__)
            _crash(cell, exc)
            raise ActorDied(cell.name) from None
        shield.__exit__(None, None, None)
        if isinstance(exc, OSError):
            _turn_done(cell, "error")
            raise
        _crash(cell, exc)
        if isinstance(exc, Exception):
            raise CallError(exc) from exc
        raise
    cell.turn_scope = None
    shield.__exit__(None, None, None)
    _turn_done(cell, "ok")
    return result


def _shield_under(task: Any, saved: Any) -> trio.CancelScope:
    """Enter a shielded cancel scope whose status sits directly below `saved` (the caller's
    cancel status when the turn began) and above any scopes the handler has opened since.

    If the handler opened none, this is an ordinary `with CancelScope(shield=True)` entered
    late. Otherwise the handler's outermost cancel status is re-parented under the shield
    (trio's CancelStatus.parent setter, which trio itself uses to move nursery children),
    so cancellation of the caller cannot reach the handler while its own timeouts still do.
    """
    shield = trio.CancelScope(shield=True)
    cur = task._cancel_status
    if cur is saved:
        shield.__enter__()
        return shield
    outer = cur
    while outer.parent is not saved:
        outer = outer.parent
        if outer is None:  # pragma: no cover - the handler left a scope open (misnesting)
            raise RuntimeError("actor turn: cancel scope stack corrupted")
    task._activate_cancel_status(saved)
    shield.__enter__()
    outer.parent = shield._cancel_status
    task._activate_cancel_status(cur)
    return shield


async def _shielded_turn(cell: _Cell, msg: Any, flow: int | None) -> Any:
    cell.state = BUSY
    cell.runner = _current_task()
    if _tr.ON:
        _tr.turn_begin(cell.name, msg, flow)
    scope = cell.turn_scope = trio.CancelScope(shield=True)
    result = None
    try:
        with scope:
            result = await cell.actor.handle(msg)
    except OSError:
        cell.turn_scope = None
        _turn_done(cell, "error")
        raise
    except Exception as exc:
        cell.turn_scope = None
        _crash(cell, exc)
        if scope.cancel_called:
            raise ActorDied(cell.name) from exc
        raise CallError(exc) from exc
    except BaseException as exc:
        cell.turn_scope = None
        _crash(cell, exc)
        raise
    cell.turn_scope = None
    if scope.cancelled_caught:  # the actor was killed during this turn
        _crash(cell, ActorDied(cell.name))
        raise ActorDied(cell.name)
    _turn_done(cell, "ok")
    return result


async def _wait_turn(cell: _Cell, msg: Any, task: Any) -> int | None:
    """Queue a call and park until it is this caller's turn (or the actor died)."""
    st = cell.state
    if st >= STOPPING:
        await checkpoint_if_cancelled()
        raise ActorDied(cell.name)
    if st == BUSY:
        _check_cycle(cell, task)
    flow = _tr.send_event(cell.name, msg) if _tr.ON else None
    env = _Env(msg, task, flow)
    mb = cell.mailbox
    if mb is None:
        mb = cell.mailbox = deque()
    mb.append(env)

    def abort(_: Any) -> Abort:
        env.task = None  # left in place; skipped when it reaches the head
        _waiting.pop(task, None)
        return Abort.SUCCEEDED

    # In the wait-for graph until woken: whoever reschedules us (turn hand-over, failure,
    # abort) removes the entry first, so a woken task is never mistaken for a waiting one.
    _waiting[task] = cell
    await wait_task_rescheduled(abort)
    return flow


# Which actor each task is queued on (only while it waits): the wait-for graph.
_waiting: dict[Any, _Cell] = {}


def _check_cycle(cell: _Cell, task: Any) -> None:
    """Follow "busy actor -> task running its turn -> actor that task is queued on" from
    `cell`; reaching `task` means waiting would deadlock."""
    path = [cell.name]
    seen = {cell}
    c = cell
    while True:
        runner = c.runner
        if runner is None:
            return
        if runner is task:
            raise CallCycle([*path, path[0]] if len(path) > 1 else [cell.name, cell.name])
        c = _waiting.get(runner)  # type: ignore[assignment]
        if c is None or c.state != BUSY or c in seen:
            return
        seen.add(c)
        path.append(c.name)


def cast(ref: ActorRef, msg: Any) -> bool:
    """Queue a one-way message; never blocks (mailboxes are unbounded).

    Returns False (and drops the message) if the actor is stopping or dead.
    """
    cell = ref._cell
    st = cell.state
    if st >= STOPPING:
        return False
    if _tr.ON:
        msg = _Traced(msg, _tr.send_event(cell.name, msg))
    mb = cell.mailbox
    if mb is None:
        mb = cell.mailbox = deque()
    mb.append(msg)
    if st == IDLE:
        cell.state = BUSY
        cell.runner = None
        _spawn_drain(cell)
    return True


# --------------------------------------------------------------------------------------
# turn transitions
# --------------------------------------------------------------------------------------


def _turn_done(cell: _Cell, outcome: str) -> None:
    if _tr.ON:
        _tr.turn_end(cell.name, outcome)
    if cell.mailbox:
        _advance(cell, False)
    else:
        cell.mailbox = None
        cell.state = IDLE


def _advance(cell: _Cell, drain: bool) -> Any:
    """A turn ended (or a drain task looks for work): hand the actor to whatever is next.

    Returns the next cast message when called by the drain task (which then runs it),
    else _NOTHING.
    """
    mb = cell.mailbox
    while mb:
        x = mb[0]
        t = type(x)
        if t is _Env:
            mb.popleft()
            task = x.task
            if task is None:  # that caller was cancelled while it waited
                continue
            cell.runner = task
            _waiting.pop(task, None)
            reschedule(task, _Value(None))
            return _NOTHING
        if t is _Marker:
            mb.popleft()
            _on_marker(cell, x)
            return _NOTHING
        if drain:
            return mb.popleft()
        cell.runner = None
        _spawn_drain(cell)
        return _NOTHING
    cell.mailbox = None
    cell.state = IDLE
    return _NOTHING


def _spawn_drain(cell: _Cell) -> None:
    cell.sup._nursery.start_soon(_drain, cell, name=cell.name)


async def _drain(cell: _Cell) -> None:
    """Run queued casts; exit when the mailbox is empty or a caller takes the turn."""
    task = _current_task()
    count = 0
    while True:
        msg = _advance(cell, True)
        if msg is _NOTHING:
            return
        flow = None
        if type(msg) is _Traced:
            flow, msg = msg.flow, msg.msg
        cell.runner = task
        if _tr.ON:
            _tr.turn_begin(cell.name, msg, flow)
        try:
            await cell.actor.handle(msg)
        except OSError as exc:
            # Nobody waits for a cast's answer; an errno reply to a cast is only logged.
            log.warning("actor %s: cast %s failed: %s", cell.name, type(msg).__name__, exc)
        except Exception as exc:
            _crash(cell, exc)
            return
        except BaseException as exc:
            _crash(cell, exc)
            raise
        if _tr.ON:
            _tr.turn_end(cell.name, "ok")
        count += 1
        if not count & 63:  # let other tasks run during a long burst of casts
            await trio.lowlevel.cancel_shielded_checkpoint()


def _request_marker(cell: _Cell, marker: _Marker) -> None:
    mb = cell.mailbox
    if mb is None:
        mb = cell.mailbox = deque()
    if marker not in mb:
        mb.appendleft(marker)


def _on_marker(cell: _Cell, marker: _Marker) -> None:
    cell.runner = None
    if marker is _GONE:
        return
    if marker is _QUIESCE:
        cell.state = RESTARTING
        _fail_queue(cell, None)
        _notify(cell)
        return
    cell.state = STOPPING
    _fail_queue(cell, None)
    cell.sup._nursery.start_soon(_finish_stop, cell, marker is _STOP, name=f"stop {cell.name}")


def _fail_queue(cell: _Cell, cause: BaseException | None) -> None:
    mb = cell.mailbox
    cell.mailbox = None
    if not mb:
        return
    for x in mb:
        if type(x) is _Env and x.task is not None:
            _waiting.pop(x.task, None)
            reschedule(x.task, _Error(ActorDied(cell.name, cause)))
            x.task = None


def _notify(cell: _Cell) -> None:
    ev = cell.event
    if ev is not None:
        cell.event = None
        ev.set()


async def _wait_state(cell: _Cell, states: tuple[int, ...]) -> None:
    while cell.state not in states:
        ev = cell.event
        if ev is None:
            ev = cell.event = trio.Event()
        await ev.wait()


def _crash(cell: _Cell, exc: BaseException) -> None:
    """The current turn raised a non-OSError: drop the instance, fail the queue, tell the
    supervisor (which restarts or gives up)."""
    if _tr.ON:
        _tr.turn_end(cell.name, "crash")
        _tr.actor_event("crash", cell.name, repr(exc))
    if cell.state == DEAD:  # killed while this turn ran
        cell.mailbox = None
        return
    if isinstance(exc, Exception):
        log.error("actor %s crashed: %r", cell.name, exc, exc_info=exc)
    mb = cell.mailbox
    stop_requested = bool(mb) and _STOP in mb  # type: ignore[operator]
    cell.actor = None
    cell.runner = None
    cell.state = RESTARTING
    _fail_queue(cell, exc)
    if stop_requested:
        _mark_dead(cell, exc)
    else:
        cell.sup._child_exited(cell, exc)
    _notify(cell)


async def _finish_stop(cell: _Cell, final: bool) -> None:
    actor = cell.actor
    try:
        if actor is not None:
            await actor.stopped()
    except Exception as exc:
        log.error("actor %s: stopped() failed: %r", cell.name, exc, exc_info=exc)
    if final or cell.state == DEAD:
        _mark_dead(cell, None)
    else:
        # A normal exit requested by the actor itself: its supervisor decides.
        cell.actor = None
        cell.state = RESTARTING
        if _tr.ON:
            _tr.actor_event("exit", cell.name, "normal")
        cell.sup._child_exited(cell, None)
        _notify(cell)


def _mark_dead(cell: _Cell, cause: BaseException | None) -> None:
    if cell.state == DEAD:
        return
    was_busy = cell.state == BUSY
    cell.state = DEAD
    if cell.turn_scope is not None:  # a turn blocked inline: abort it (caller: ActorDied)
        cell.turn_scope.cancel()
    cell.actor = None
    cell.runner = None
    _fail_queue(cell, cause)
    if was_busy:
        cell.mailbox = deque((_GONE,))
    if _tr.ON:
        _tr.actor_event("exit", cell.name, repr(cause) if cause else "stopped")
    cell.sup._forget(cell)
    _notify(cell)
    # Gone for good: nobody hands this address out again, so the cell lets go of its own
    # ActorRef. With that cycle broken, a retired actor's record (its spec, and what the
    # factory closed over) is freed as soon as the last ActorRef is dropped, not at the
    # next full garbage collection: with a vnode per file, those piled up to megabytes
    # between collections and left the heap fragmented after them.
    cell.ref = None


async def _start_instance(cell: _Cell, actor: Actor) -> None:
    """(Re)start: run `started()` on a fresh instance, then let queued calls in.
    Exceptions from `started()` propagate to the caller (the supervisor or `sup.start`)."""
    actor.ref = cell.ref
    cell.gen += 1
    await actor.started()
    if cell.state == DEAD:  # stopped while starting
        try:
            await actor.stopped()
        except Exception as exc:
            log.error("actor %s: stopped() failed: %r", cell.name, exc, exc_info=exc)
        return
    cell.actor = actor
    cell.state = BUSY
    _advance(cell, False)
    _notify(cell)


# --------------------------------------------------------------------------------------
# calls over plain channels
# --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Request:
    """A call sent over a plain Channel: the request and a fresh reply channel.

    A server task receives Request values and answers each with `respond(value)` or
    `fail(exc)` (an OSError is re-raised in the caller as is, anything else as CallError).
    Closing `reply` without answering makes the caller's call raise ActorDied.
    """

    msg: Any
    reply: Channel

    def respond(self, value: Any) -> None:
        self.reply.send_nowait((True, value))

    def fail(self, exc: BaseException) -> None:
        self.reply.send_nowait((False, exc))


async def _call_channel(ch: Channel, msg: Any) -> Any:
    reply = Channel(1, name="reply")
    await ch.send(Request(msg, reply))
    try:
        ok, value = await reply.receive()
    except EndOfChannel:
        raise ActorDied(ch.name or "channel server") from None
    if ok:
        return value
    if isinstance(value, OSError):
        raise value
    raise CallError(value) from value
