"""The vnode table: inode number -> the live vnode actor serving it.

The table is an actor. It starts a vnode actor on the first message for an inode (under
the vnode supervisor), hands out its address, and keeps the number of live vnode actors
near a bound (``max_vnodes``) by retiring idle ones, least recently used first. A retired
vnode is started again, from its on-disk state, by the next message for its inode. Its
messages are in chanos.fs.vnode_table_protocol.

Pins: who may hold a vnode's address
------------------------------------
An address handed out must stay valid while it is used, so every user pins the vnode:

* a request in flight: ``Pin(ino)`` (a call, answered with the address) ... the request to
  the vnode ... ``Unpin(ino)`` (``tell``). ``call_vnode`` does exactly this and is what the
  kernel, the rename coordinator and vnodes themselves use to reach another vnode;
* an open handle: ``Unpin(ino, opened=1)`` turns the request's pin into a handle pin, kept
  until ``Closed(ino)`` (sent when the handle is released); the pin a directory takes for
  the file it creates (``Pin`` with its record) is a handle pin from the start. A
  ``Handle`` carries the vnode's address, so a vnode with open handles is never retired.

"Idle" means: no pins of either kind. Only idle vnodes are retired; the lookup count the
host kernel holds (``Forget``) does not keep a vnode alive, because a vnode keeps no state
that is not written back on retirement. The bound is therefore soft: when more vnodes
than ``max_vnodes`` are pinned at once, the table runs above the bound until pins drop.
A vnode whose lookup count drops to zero by ``Forget`` moves to the cold end of the LRU
order (the host kernel has forgotten it, so it goes first when room is needed) but is not
retired there and then: the host kernel forgets in bursts, and retiring thousands of
vnodes inside the Forgets holds up every lookup behind them. A vnode whose held inode was
freed by its ``Forgotten`` retires as soon as it is idle.

Unlinked inodes still referenced
--------------------------------
An inode whose last link goes and whose last handle is released while the host kernel
still holds lookup references on it is not freed: the host may still send requests for its
number (a SETATTR flushing cached times right after an unlink), which must reach the old
inode, never a new file that reused the number. Its vnode asks ``Hold(ino)``; the table
records it (``_held``) and, when ``Forget`` brings the count to zero, pins the vnode and
casts it ``Forgotten()``; the vnode frees the inode and unpins. At unmount ``free_held``
does the same for every inode still held (the mount ends the references); a crash leaves
them on the on-disk orphan list, freed by the next mount.

The fast path: requests to a live vnode without a pin
-----------------------------------------------------

Pin + request + Unpin is three messages where the request alone is one. The kernel
remembers the addresses it was given (Pin replies, handles) and sends a request that
never asks the table straight to the remembered address, wrapped in ``Unpinned``. No
state is shared with the table; what makes it safe is how retirement is ordered. The
table stops a vnode in its own turn and starts a new one for the same inode only after
the old one has stopped, so a remembered address that still reaches a running actor
reaches the only vnode of its inode. A request that runs before the stop is served, and
what it changed is written back by the vnode's ``stopped()``; one still queued at the
stop, or sent after it, gets ``ActorDied`` without running, and the kernel sends it
again, pinned. A vnode asked ``Unpinned`` whose request could call the table (restarted
after a crash and not yet told its open count, or its inode unlinked or not loaded)
answers ``NEEDS_PIN`` at once, and the kernel takes the pinned path: an unpinned vnode
counts as idle, and the table may be waiting for it. An unpinned request does not
refresh the vnode's place in the LRU order.

Retirement is ``stop()`` (the vnode writes itself back in ``stopped()``), awaited inside
the table's turn. That is safe from deadlock because an idle vnode is, by definition, not
serving a request that could be waiting on the table; and it guarantees a new actor for
the same inode never starts before the old one has written its state back.

Sync is different: it must write back every live vnode, busy ones included, and a busy
vnode's turn may itself be waiting for the table (a directory pinning its child). So the
table only lists the live vnodes (``WriteBackAll``, one short turn) and the write-backs
run outside its turn (``write_back_all``): a write-back to a busy vnode waits for the end
of its turn, while the table goes on answering that turn's pins.

Crashes: a vnode that raises anything but ``OSError`` is restarted by the vnode
supervisor from fresh state (re-read from disk); the request that hit the crash gets
``OSError(EIO)`` from ``call_vnode`` and the table is told (``Crashed``), so it can drop an
address that did not survive the restart. The one thing not on disk is how many handles
are open on the inode, which decides when an unlinked inode is freed; the table counts
them too (handle pins), so ``supervised_starter`` marks a restarted instance
(``restarted = True``) and the vnode asks ``OpenCount`` before its first request. That
request comes from a pin or handle holder, so the vnode is not idle and the table is not
waiting on it: no cycle. (WriteBack, which sync sends, and stopped() do not ask.)
"""

from __future__ import annotations

import errno
import logging
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from chanos.fs.lookup_counts import LookupCounts
from chanos.fs.vnode_protocol import Forgotten, WriteBack
from chanos.fs.vnode_table_protocol import (
    Closed,
    Crashed,
    Deliver,
    Forget,
    GetStats,
    Hold,
    IsHeld,
    IsLive,
    OpenCount,
    Pin,
    Referenced,
    RetireAll,
    TableStats,
    TakeHeld,
    Unpin,
    WriteBackAll,
)
from chanos.personality import TRANSIENT, Actor, ActorRef, CallError, ChildSpec, call, cast
from chanos.personality.actor import caller_cancelled, shielded

log = logging.getLogger(__name__)

DEFAULT_MAX_VNODES = 10_000


# ---------------------------------------------------------------------------------------
# Client helper
# ---------------------------------------------------------------------------------------


async def call_vnode(table: ActorRef, ino: int, msg: Any) -> Any:
    """Send ``msg`` to ``ino``'s vnode and return the reply (OSError passes through).

    The vnode is pinned for the duration of the call. A crash of the vnode while serving
    (or holding) the request becomes ``OSError(EIO)``.
    """
    ref = await call(table, Pin(ino))
    try:
        return await call(ref, msg)
    except CallError as exc:
        cast(table, Crashed(ino, ref))
        log.error("vnode %d failed serving %s: %r", ino, type(msg).__name__, exc)
        raise OSError(errno.EIO, f"vnode {ino} failed: {exc}") from exc
    finally:
        await tell(table, Unpin(ino))


async def tell(table: ActorRef, msg: Any) -> None:
    """Deliver a one-way message (``Unpin``, ``Closed``) to the table, from outside its turn.

    A cast to an idle actor spawns a task to run the turn; a call to an idle actor runs it
    inline in the caller's task, several times cheaper. So this calls when the table is
    idle and the caller is not cancelled, and casts otherwise: a call that a cancellation
    stops before its turn starts would lose the message, and a cast to a busy table only
    queues it. The call cannot close a cycle: the table's turns wait only for idle vnodes
    (``stop`` when retiring), which serve no request and do not call the table. A crash
    of the table on the message is logged; its supervisor restarts it, as for a cast.
    """
    if table.idle and not caller_cancelled():
        try:
            await call(table, msg)
        except CallError as exc:
            log.error("vnode table failed on %s: %r", type(msg).__name__, exc)
    else:
        cast(table, msg)


async def write_back_all(table: ActorRef) -> None:
    """Write back every vnode live when called (sync), outside the table's turn.

    A vnode busy in a turn is written back when that turn ends. One retired meanwhile
    wrote itself back on stopping; one that crashes is reported, and the others are
    still written back.
    """
    for ino, ref in await call(table, WriteBackAll()):
        try:
            await call(ref, WriteBack())
        except CallError as exc:
            if not _alive(ref):
                continue  # retired since it was listed: written back when it stopped
            # A crash while writing back loses only what the crash lost; the actor is
            # restarted from disk.
            log.error("vnode %d failed writing back: %r", ino, exc)


async def forget(table: ActorRef, ino: int, nlookup: int) -> None:
    """The host kernel dropped ``nlookup`` lookup references on ``ino`` (its FORGET).

    A call (the table's turn runs inline when it is idle) and, if that was the last
    reference to a held inode, ``Forgotten`` to its vnode from here, also a call: no task
    is spawned for either turn (a cast to the table and the table's cast to the vnode
    each spawned one), and the inode is freed before this returns, so no Forgotten is
    left queued behind the caller's back (unmount retires every vnode, pinned or not: a
    queued Forgotten there could wait on the table retiring it). Shielded: a cancelled
    caller must not lose the message. For callers outside any actor's turn (the kernel).
    """
    await shielded(_forget(table, ino, nlookup))


async def _forget(table: ActorRef, ino: int, nlookup: int) -> None:
    try:
        ref = await call(table, Forget(ino, nlookup, take=True))
    except CallError as exc:
        log.error("vnode table failed on Forget: %r", exc)
        return
    if ref is not None:
        await _send_forgotten(table, ino, ref)


async def _send_forgotten(table: ActorRef, ino: int, ref: ActorRef) -> None:
    """``Forgotten`` to the pinned vnode ``ref`` of held ``ino``, then its unpin."""
    try:
        await call(ref, Forgotten(unpin=False))
    except CallError as exc:
        cast(table, Crashed(ino, ref))
        log.error("vnode %d failed freeing its unlinked inode: %r", ino, exc)
    except OSError as exc:
        log.error("vnode %d failed freeing its unlinked inode: %s", ino, exc)
    finally:
        await tell(table, Unpin(ino))


async def free_held(table: ActorRef) -> None:
    """Unmount: free every unlinked inode kept for the host kernel's lookup references
    (its references end with the mount). Run outside the table's turn, before
    ``RetireAll``, after the open handles were released."""
    for ino, ref in await call(table, TakeHeld()):
        await _send_forgotten(table, ino, ref)


# ---------------------------------------------------------------------------------------
# The table actor
# ---------------------------------------------------------------------------------------


class _Slot:
    """Book-keeping of one live vnode (plain record, owned by the table actor)."""

    __slots__ = ("adopted", "forgotten", "opened", "pins", "ref")

    def __init__(self, ref: ActorRef, adopted: bool = False) -> None:
        self.ref = ref
        self.pins = 0  # requests in flight
        self.opened = 0  # open handles
        # Sent Forgotten (its inode freed, the host's references gone): retired as soon
        # as it is idle, instead of lingering until the bound pushes it out.
        self.forgotten = False
        # Found running when the table (re)started: its pins and handles are unknown, so it
        # is kept until unmount rather than risk retiring it under an open handle.
        self.adopted = adopted

    @property
    def idle(self) -> bool:
        return self.pins == 0 and self.opened == 0 and not self.adopted


class VnodeTable(Actor):
    """The table actor. ``start_vnode(ino) -> ActorRef`` starts a vnode actor for ``ino``
    (under the vnode supervisor); boot supplies it, see ``supervised_starter``."""

    def __init__(
        self,
        start_vnode: Callable[[int], Any],
        max_vnodes: int = DEFAULT_MAX_VNODES,
        running: Callable[[], list[Any]] | None = None,
    ) -> None:
        if max_vnodes < 1:
            raise ValueError("max_vnodes must be at least 1")
        self._start_vnode = start_vnode
        self._running = running
        self._max = max_vnodes
        # Live vnodes, least recently used first (move_to_end on every Pin).
        self._live: OrderedDict[int, _Slot] = OrderedDict()
        # Lookup references held by the host kernel, by inode (live or not).
        self._lookups = LookupCounts()
        # Unlinked inodes with nothing open, kept allocated until their lookup count
        # reaches zero: until then the host kernel may still send requests for the number,
        # which must not reach a new file that reused it.
        self._held: set[int] = set()
        self._started = 0
        self._retired = 0
        self._peak = 0

    async def started(self) -> None:
        # After a crash of the table, the vnodes it had started are still running: adopt
        # them, so no second actor is ever started for an inode that has one.
        if self._running is None:
            return
        for ref in self._running():
            name = getattr(ref, "name", "")
            if not name.startswith("vnode-") or not _alive(ref):
                continue
            try:
                ino = int(name.removeprefix("vnode-"))
            except ValueError:
                continue
            self._live[ino] = _Slot(ref, adopted=True)
        if self._live:
            log.warning("vnode table restarted: adopted %d running vnodes", len(self._live))

    async def handle(self, msg: Any) -> Any:
        match msg:
            case Pin(ino, fresh):
                started = self._started
                slot = await self._slot(ino, fresh)
                if fresh is None:
                    slot.pins += 1
                    return slot.ref
                slot.opened += 1  # the created file's handle (see Pin)
                return slot.ref, self._started != started
            case Deliver(ino, delivered):
                # Queued in the vnode's mailbox, the message keeps it from being retired
                # (only an idle vnode is) until it has been served.
                cast((await self._slot(ino)).ref, delivered)
                return None
            case Unpin(ino, opened, looked_up):
                slot = self._live.get(ino)
                if slot is not None:
                    slot.pins -= 1
                    slot.opened += opened
                if looked_up:
                    self._lookups.add(looked_up)
                if slot is not None:
                    if slot.forgotten and slot.idle and ino not in self._lookups:
                        await self._retire(ino, slot)
                    elif len(self._live) > self._max:
                        await self._make_room(0)
                return None
            case IsLive(ino):
                return ino in self._live
            case Referenced(inos):
                add = self._lookups.add
                for ino in inos:
                    add(ino)
                return None
            case Closed(ino):
                slot = self._live.get(ino)
                if slot is not None and slot.opened > 0:
                    slot.opened -= 1
                    if slot.opened == 0 and len(self._live) > self._max:
                        await self._make_room(0)
                return None
            case OpenCount(ino):
                slot = self._live.get(ino)
                return slot.opened if slot is not None else 0
            case Hold(ino):
                if ino in self._lookups:
                    self._held.add(ino)
                    return True
                return False
            case IsHeld(ino):
                return ino in self._held
            case Forget(ino, nlookup, take):
                have = self._lookups.get(ino)
                if nlookup > have:
                    log.error(
                        "forget(%d, %d) but only %d references were counted", ino, nlookup, have
                    )
                left = have - nlookup
                self._lookups.set(ino, left)
                if left > 0:
                    return None
                freed = False
                if ino in self._held:
                    self._held.discard(ino)
                    if take:
                        return await self._pin_new(ino)
                    await self._forgotten(ino)
                    freed = True
                slot = self._live.get(ino)
                if slot is not None and slot.idle:
                    if freed:
                        await self._retire(ino, slot)
                    else:
                        # First in line when room is needed, but not retired now: that is
                        # a write-back and a stop each, and the host kernel forgets in
                        # bursts (memory pressure, drop_caches) that lookups would queue
                        # behind. Looked up again, it is still here.
                        self._live.move_to_end(ino, last=False)
                return None
            case Crashed(ino, ref):
                slot = self._live.get(ino)
                if slot is not None and slot.ref is ref and not _alive(ref):
                    # The restart did not keep the address: forget it, start afresh.
                    del self._live[ino]
                return None
            case WriteBackAll():
                # Not written back here: a busy vnode's turn may be waiting on this table.
                return [(ino, slot.ref) for ino, slot in self._live.items()]
            case TakeHeld():
                held = []
                while self._held:
                    ino = self._held.pop()
                    held.append((ino, await self._pin_new(ino)))
                return held
            case RetireAll():
                while self._live:
                    ino, slot = self._live.popitem(last=False)
                    await self._stop(ino, slot)
                return None
            case GetStats():
                return TableStats(
                    live=len(self._live),
                    pinned=sum(1 for s in self._live.values() if not s.idle),
                    started=self._started,
                    retired=self._retired,
                    peak=self._peak,
                    max_vnodes=self._max,
                )
            case _:
                raise TypeError(f"vnode table: unknown message {msg!r}")

    async def _slot(self, ino: int, fresh: Any = None) -> _Slot:
        """The slot of ``ino``'s vnode, started if needed (moved to the LRU's warm end)."""
        slot = self._live.get(ino)
        if slot is None:
            await self._make_room()
            if fresh is None:
                ref = await self._start_vnode(ino)
            else:
                ref = await self._start_vnode(ino, fresh)
            slot = _Slot(ref)
            self._live[ino] = slot
            self._started += 1
            self._peak = max(self._peak, len(self._live))
        else:
            self._live.move_to_end(ino)
        return slot

    async def _make_room(self, incoming: int = 1) -> None:
        """Retire idle vnodes, least recently used first, until ``incoming`` more fit."""
        excess = len(self._live) + incoming - self._max
        if excess <= 0:
            return
        victims = []
        for ino, slot in self._live.items():
            if slot.idle:
                victims.append((ino, slot))
                if len(victims) == excess:
                    break
        for ino, slot in victims:
            await self._retire(ino, slot)

    async def _pin_new(self, ino: int) -> ActorRef:
        """Pin ``ino``'s vnode (started if needed) for a Forgotten; unpinned after it."""
        slot = self._live.get(ino)
        if slot is None:
            slot = _Slot(await self._start_vnode(ino))
            self._live[ino] = slot
            self._started += 1
            self._peak = max(self._peak, len(self._live))
        slot.pins += 1
        slot.forgotten = True
        return slot.ref

    async def _forgotten(self, ino: int) -> None:
        """Tell the vnode of held ``ino`` that its last lookup reference is gone.

        A cast, never a call: freeing takes the orphan list, which pins the neighbouring
        orphans through this table. The pin taken for it keeps the vnode from being
        retired (and so this table from waiting on it) until it is handled.
        """
        ref = await self._pin_new(ino)
        try:
            cast(ref, Forgotten())
        except Exception as exc:  # a dead address: the inode stays an orphan on disk
            self._live[ino].pins -= 1
            log.error("vnode %d unreachable to free its forgotten inode: %r", ino, exc)

    async def _retire(self, ino: int, slot: _Slot) -> None:
        del self._live[ino]
        await self._stop(ino, slot)
        self._retired += 1

    async def _stop(self, ino: int, slot: _Slot) -> None:
        # The vnode writes itself back in stopped(), which also covers a request served
        # unpinned up to the stop; a failure there is logged by the actor runtime.
        try:
            await slot.ref.stop()
        except CallError as exc:
            log.error("vnode %d failed stopping: %r", ino, exc)


def _alive(ref: Any) -> bool:
    """Whether an actor address still reaches a running actor (best effort)."""
    alive = getattr(ref, "alive", None)
    if alive is None:
        return False
    return bool(alive() if callable(alive) else alive)


def supervised_starter(supervisor: Any, make_vnode: Callable[[int], Actor]) -> Callable[..., Any]:
    """``start_vnode`` for ``VnodeTable``: start ``make_vnode(ino)`` under ``supervisor``.

    Vnodes are TRANSIENT children: restarted after a crash, not after a retirement. An
    instance made for a restart gets ``restarted = True`` (see the module docstring).
    ``fresh`` (a Pin's current record) is handed to the first instance only, as
    ``fresh``: a restart reads the inode from disk.
    """

    async def start(ino: int, fresh: Any = None) -> ActorRef:
        made = 0

        def factory() -> Actor:
            nonlocal made
            vnode = make_vnode(ino)
            if made:
                vnode.restarted = True  # type: ignore[attr-defined]
            elif fresh is not None:
                vnode.fresh = fresh  # type: ignore[attr-defined]
            made += 1
            return vnode

        return await supervisor.start(
            ChildSpec(name=f"vnode-{ino}", factory=factory, restart=TRANSIENT)
        )

    return start
