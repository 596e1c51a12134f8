"""Messages understood by the vnode table (chanos.fs.vnode_table).

The vnode table maps inode numbers to live vnode actors: it starts a vnode on demand, hands
out its address pinned (``Pin`` ... ``Unpin``), counts open handles (``Unpin(opened=)`` ...
``Closed``) and the host kernel's lookup references (``Unpin(looked_up=)``, ``Referenced``,
``Forget``), keeps unlinked inodes the host still refers to (``Hold``, ``IsHeld``), and
retires idle vnodes. The kernel (chanos.personality.boot), the rename coordinator, the
orphan list and vnodes send these, mostly through the helpers ``call_vnode`` and ``tell``
in chanos.fs.vnode_table; a vnode asks ``Hold`` when its inode loses its last link and
handle, ``OpenCount`` after a crash restart and ``IsHeld`` when it finds its inode
unlinked on disk. ``Pin`` answers with the vnode's ``ActorRef`` (and, for a new inode's
record, whether it started the vnode); the casts (``Unpin``, ``Closed``, ``Referenced``,
``Forget``, ``Crashed``, ``Deliver``) answer nothing; the rest answer as each class says.
Unmount and sync use ``WriteBackAll``, ``TakeHeld`` and ``RetireAll``.

``Unpinned`` is not for the table: it wraps a request the kernel sends to a vnode without
a pin (see "The fast path" in chanos.fs.vnode_table); ``NEEDS_PIN`` is the reply of a
vnode that cannot serve it so.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Pin:
    """-> ActorRef of ``ino``'s vnode (started if needed), pinned until ``Unpin``.

    ``fresh``: the inode's current record (an ``Inode``), for a vnode started by this
    Pin to begin with instead of reading it, already opened once; only a directory
    creating the inode sends it, in the turn that made the record and for the handle it
    hands out (see ``vnode_protocol.CreateOpen``). That pin is the handle's at once,
    held until ``Closed`` (as ``Unpin(ino, opened=1)`` would make it). The reply is then
    (ActorRef, whether this Pin started the vnode): a vnode live already (left for a
    freed inode whose number came round again) ignores the record, and must be opened
    as usual."""

    ino: int
    fresh: Any = None


@dataclass(frozen=True, slots=True)
class Deliver:
    """Cast: cast ``msg`` to ``ino``'s vnode, starting it if needed.

    For an actor that must never wait on the table (the orphan list: vnodes call it from
    turns the table waits for, such as their write-back when retired)."""

    ino: int
    msg: Any


@dataclass(frozen=True, slots=True)
class Unpinned:
    """To a vnode: serve ``msg`` (a GetAttr, Lookup, xattr read, SetAttr, ...) without a
    pin, or answer ``NEEDS_PIN`` when serving it could ask the vnode table anything (a
    vnode restarted after a crash, or one whose inode is unlinked or not loaded): the
    table may be retiring an unpinned vnode and waiting for it."""

    msg: Any


class _NeedsPin:
    __slots__ = ()

    def __repr__(self) -> str:
        return "NEEDS_PIN"


NEEDS_PIN: Any = _NeedsPin()


@dataclass(frozen=True, slots=True)
class Unpin:
    """Cast: drop one request pin of ``ino``.

    ``opened``: handles opened by the request, which keep the vnode pinned until as many
    ``Closed``. ``looked_up``: the inode of an Entry the request returned to the host
    kernel (0 = none), counted as one lookup reference (see ``Forget``).
    """

    ino: int
    opened: int = 0
    looked_up: int = 0


@dataclass(frozen=True, slots=True)
class IsLive:
    """-> bool: whether ``ino`` has a live vnode (none is started; nothing is pinned).

    False means the inode's on-disk record (in its group actor) is its whole state: a
    vnode writes its inode back before it is retired, within the table's turn."""

    ino: int


@dataclass(frozen=True, slots=True)
class Referenced:
    """Cast: the host kernel got one lookup reference on each of ``inos`` (the counted
    entries of a ReadDir reply; an inode may appear more than once)."""

    inos: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Closed:
    """Cast: one open handle of ``ino`` was released."""

    ino: int


@dataclass(frozen=True, slots=True)
class OpenCount:
    """-> int: the handles open on ``ino`` (for a vnode restarted after a crash)."""

    ino: int


@dataclass(frozen=True, slots=True)
class Forget:
    """The host kernel dropped ``nlookup`` lookup references on ``ino``.

    Cast (``take`` False): a held inode whose last reference this was is sent
    ``Forgotten`` by the table. Called with ``take`` True: -> the address of that inode's
    vnode, pinned, for the caller to send ``Forgotten`` itself (as ``free_held`` does),
    or None when there is nothing to free."""

    ino: int
    nlookup: int
    take: bool = False


@dataclass(frozen=True, slots=True)
class Hold:
    """-> bool: called by the vnode of ``ino`` when its inode has no link and no open
    handle left. True when the host kernel still holds lookup references on it: the table
    records the inode as held and sends the vnode ``Forgotten`` when the last reference
    is forgotten (or at unmount); the vnode keeps the inode (on the orphan list) until
    then. False: nothing refers to it, the vnode frees it now."""

    ino: int


@dataclass(frozen=True, slots=True)
class IsHeld:
    """-> bool: whether ``ino`` is an unlinked inode kept for the host kernel's lookup
    references (asked by a vnode started afresh for such an inode)."""

    ino: int


@dataclass(frozen=True, slots=True)
class Crashed:
    """Cast: a request to ``ref`` (the vnode of ``ino``) failed with a crash."""

    ino: int
    ref: Any


@dataclass(frozen=True, slots=True)
class WriteBackAll:
    """-> list of ``(ino, ActorRef)`` of every live vnode, for ``write_back_all`` (sync).
    The table does not write them back itself: see the module docstring."""


@dataclass(frozen=True, slots=True)
class TakeHeld:
    """-> list of ``(ino, ActorRef)``: every held inode (see ``Hold``), no longer held and
    its vnode pinned, for ``free_held`` (unmount), which unpins it after ``Forgotten``."""


@dataclass(frozen=True, slots=True)
class RetireAll:
    """Write back and stop every live vnode (unmount) -> None. Pins are ignored: the
    caller guarantees nothing is in flight."""


@dataclass(frozen=True, slots=True)
class GetStats:
    """-> TableStats."""


@dataclass(frozen=True, slots=True)
class TableStats:
    """The reply to ``GetStats``: live vnodes, how many are pinned (requests or handles),
    starts and retirements so far, the peak of live vnodes and the bound."""

    live: int
    pinned: int
    started: int
    retired: int
    peak: int
    max_vnodes: int
