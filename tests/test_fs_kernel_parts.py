"""The kernel's own actors in isolation: vnode table, rename coordinator, orphan list.

The vnodes here are small stand-ins speaking ``chanos.fs.vnode_protocol`` over an
in-memory tree (``FakeDisk``), so these tests pin down the kernel's side of the protocol
(pins and retirement, rename's checks and link-count arithmetic, the orphan chain) without
depending on the on-disk vnode. The same behaviour is checked end to end on real ext4
images in test_fs_syscalls.py.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass, field

import pytest
import trio
from chanos.fs import vnode_protocol as vp
from chanos.fs.orphan_protocol import AddOrphan, ListOrphans, RemoveOrphan, SetOrphanNext
from chanos.fs.orphans import OrphanList, cleanup_orphans
from chanos.fs.rename import RenameCoordinator
from chanos.fs.superblock_protocol import GetLastOrphan, SetLastOrphan
from chanos.fs.vnode_table import VnodeTable, call_vnode, supervised_starter
from chanos.fs.vnode_table_protocol import (
    Closed,
    Forget,
    GetStats,
    Hold,
    Pin,
    Referenced,
    RetireAll,
    Unpin,
)
from chanos.personality import PERMANENT, Actor, CallError, ChildSpec, call, open_supervisor
from chanos.personality.syscalls import RENAME_EXCHANGE, RENAME_NOREPLACE, Rename

FT_REG, FT_DIR = 1, 2


@dataclass
class Node:
    ft: int
    nlink: int
    entries: dict[bytes, tuple[int, int]] = field(default_factory=dict)
    dtime: int = 0
    ctime: int = 0


@dataclass
class FakeDisk:
    """What is "on disk" for the stand-in vnodes, plus counters the tests look at."""

    nodes: dict[int, Node] = field(default_factory=dict)
    started: list[int] = field(default_factory=list)
    stopped: list[int] = field(default_factory=list)
    writebacks: list[int] = field(default_factory=list)
    reclaimed: list[int] = field(default_factory=list)
    live: set[int] = field(default_factory=set)
    crash_on: set[int] = field(default_factory=set)
    next_ino: int = 100

    def mkdir(self, parent: int, name: bytes) -> int:
        ino = self.next_ino
        self.next_ino += 1
        self.nodes[ino] = Node(FT_DIR, 2, {b".": (ino, FT_DIR), b"..": (parent, FT_DIR)})
        self.nodes[parent].entries[name] = (ino, FT_DIR)
        self.nodes[parent].nlink += 1
        return ino

    def mkfile(self, parent: int, name: bytes) -> int:
        ino = self.next_ino
        self.next_ino += 1
        self.nodes[ino] = Node(FT_REG, 1)
        self.nodes[parent].entries[name] = (ino, FT_REG)
        return ino

    def names(self, ino: int) -> set[bytes]:
        return set(self.nodes[ino].entries) - {b".", b".."}


def new_disk() -> FakeDisk:
    d = FakeDisk()
    d.nodes[2] = Node(FT_DIR, 2, {b".": (2, FT_DIR), b"..": (2, FT_DIR)})
    return d


class FakeVnode(Actor):
    """A vnode stand-in. Its ctime change is held in memory until WriteBack (sync) or
    its stop (retirement), as a real vnode writes itself back in ``stopped()``; a
    retirement that lost it would be visible in the disk."""

    def __init__(self, ino: int, disk: FakeDisk) -> None:
        self.ino = ino
        self.disk = disk
        self.dirty_ctime: int | None = None

    async def started(self) -> None:
        if self.ino not in self.disk.nodes:
            raise OSError(errno.ENOENT, "no such inode")
        self.disk.started.append(self.ino)
        assert self.ino not in self.disk.live, "two live actors for one inode"
        self.disk.live.add(self.ino)

    async def stopped(self) -> None:
        self._write_back()
        self.disk.stopped.append(self.ino)
        self.disk.live.discard(self.ino)

    def _write_back(self) -> None:
        node = self.disk.nodes.get(self.ino)
        if node is not None and self.dirty_ctime is not None:
            node.ctime = self.dirty_ctime
            self.dirty_ctime = None

    def _dir(self) -> Node:
        node = self.disk.nodes[self.ino]
        if node.ft != FT_DIR:
            raise OSError(errno.ENOTDIR, "not a directory")
        return node

    async def handle(self, msg):
        if self.ino in self.disk.crash_on:
            self.disk.crash_on.discard(self.ino)
            self.disk.live.discard(self.ino)  # the restart will start a fresh one
            raise RuntimeError("injected vnode crash")
        node = self.disk.nodes[self.ino]
        match msg:
            case vp.LookupEntry(name):
                d = self._dir()
                if name not in d.entries:
                    raise OSError(errno.ENOENT, "no entry")
                return d.entries[name]
            case vp.InsertEntry(name, ino, ft):
                d = self._dir()
                if d.nlink == 0:
                    raise OSError(errno.ENOENT, "directory removed")
                if name in d.entries:
                    raise OSError(errno.EEXIST, "exists")
                d.entries[name] = (ino, ft)
                return None
            case vp.RemoveEntry(name, expect):
                d = self._dir()
                if name not in d.entries or (expect and d.entries[name][0] != expect):
                    raise OSError(errno.ENOENT, "no entry")
                return d.entries.pop(name)
            case vp.ReplaceEntry(name, ino, ft, expect):
                d = self._dir()
                if name not in d.entries or (expect and d.entries[name][0] != expect):
                    raise OSError(errno.ENOENT, "no entry")
                old = d.entries[name]
                d.entries[name] = (ino, ft)
                return old
            case vp.CheckEmpty():
                if set(self._dir().entries) - {b".", b".."}:
                    raise OSError(errno.ENOTEMPTY, "not empty")
                return None
            case vp.AdjustLinks(delta):
                if delta > 0 and node.nlink >= 10:  # a tiny limit so EMLINK is testable
                    raise OSError(errno.EMLINK, "too many links")
                node.nlink += delta
                return node.nlink
            case vp.DropLink():
                node.nlink = 0 if node.ft == FT_DIR else node.nlink - 1
                return node.nlink
            case vp.Renamed(new_parent):
                self.dirty_ctime = (self.dirty_ctime or node.ctime) + 1
                if new_parent:
                    node.entries[b".."] = (new_parent, FT_DIR)
                return None
            case vp.WriteBack():
                self.disk.writebacks.append(self.ino)
                self._write_back()
                return None
            case vp.Reclaim():
                self.disk.reclaimed.append(self.ino)
                del self.disk.nodes[self.ino]
                return None
            case SetOrphanNext(nxt):
                node.dtime = nxt
                return None
            case "ping":
                return self.ino
            case _:
                raise TypeError(msg)


class FakeSuperblock(Actor):
    def __init__(self, box: dict) -> None:
        self.box = box

    async def handle(self, msg):
        match msg:
            case GetLastOrphan():
                return self.box["last_orphan"]
            case SetLastOrphan(ino):
                self.box["last_orphan"] = ino
                return None


async def start_kernel_parts(sup, disk: FakeDisk, max_vnodes: int):
    vnodes = await sup.start_supervisor(name="vnodes")
    starter = supervised_starter(vnodes, lambda ino: FakeVnode(ino, disk))
    table = await sup.start(
        ChildSpec(
            name="table",
            factory=lambda: VnodeTable(starter, max_vnodes, running=lambda: vnodes.children),
            restart=PERMANENT,
        )
    )
    rename = await sup.start(ChildSpec(name="rename", factory=lambda: RenameCoordinator(table)))
    return table, rename


# ---------------------------------------------------------------------------------------
# vnode table
# ---------------------------------------------------------------------------------------


async def test_table_bounds_live_vnodes_and_writes_back_on_retirement():
    disk = new_disk()
    files = [disk.mkfile(2, b"f%d" % i) for i in range(12)]
    async with open_supervisor(name="t") as sup:
        table, _ = await start_kernel_parts(sup, disk, max_vnodes=4)
        for ino in files:
            await call_vnode(table, ino, vp.Renamed())  # leaves a dirty ctime in memory
            assert len(disk.live) <= 4
        st = await call(table, GetStats())
        assert st.live == 4 and st.retired == 8 and st.peak == 4
        # Retired ones were written back before they stopped; LRU order: oldest first.
        assert disk.stopped == files[:8]
        for ino in files[:8]:
            assert disk.nodes[ino].ctime == 1
        # A retired vnode restarts on the next message.
        assert await call_vnode(table, files[0], "ping") == files[0]
        assert disk.started.count(files[0]) == 2
        await call(table, RetireAll())
        assert not disk.live
        assert all(disk.nodes[i].ctime == 1 for i in files)


async def test_table_never_retires_pinned_or_open_vnodes():
    disk = new_disk()
    files = [disk.mkfile(2, b"f%d" % i) for i in range(6)]
    async with open_supervisor(name="t") as sup:
        table, _ = await start_kernel_parts(sup, disk, max_vnodes=2)
        # Open three (pin -> Unpin(opened=1)), then touch three others.
        refs = {}
        for ino in files[:3]:
            refs[ino] = await call(table, Pin(ino))
            await call(table, Unpin(ino, opened=1))
        held = await call(table, Pin(files[3]))  # an in-flight request
        for ino in files[4:]:
            await call_vnode(table, ino, "ping")
        # Soft bound: the open and pinned vnodes are all still live, same addresses.
        assert {*files[:4]} <= disk.live
        for ino in files[:3]:
            assert await call(refs[ino], "ping") == ino
        assert await call(held, "ping") == files[3]
        await call(table, Unpin(files[3]))
        for ino in files[:3]:
            await call(table, Closed(ino))
        await call_vnode(table, files[5], "ping")
        st = await call(table, GetStats())
        assert st.live <= 2
        await call(table, RetireAll())


async def test_forgotten_vnode_is_first_to_retire_when_room_is_needed():
    disk = new_disk()
    f = disk.mkfile(2, b"f")
    others = [disk.mkfile(2, b"g%d" % i) for i in range(3)]
    async with open_supervisor(name="t") as sup:
        table, _ = await start_kernel_parts(sup, disk, max_vnodes=4)
        for g in others:  # used before f: f is the most recently used
            await call(table, Pin(g))
            await call(table, Unpin(g))
        await call(table, Pin(f))
        await call(table, Unpin(f, looked_up=f))
        await call(table, Pin(f))
        await call(table, Unpin(f, looked_up=f))
        await call(table, Forget(f, 1))
        assert f in disk.live  # one lookup left
        await call(table, Forget(f, 1))
        assert f in disk.live and disk.stopped == []  # not retired in the Forget
        g = disk.mkfile(2, b"new")
        await call(table, Pin(g))  # the table is full: one vnode must go
        await call(table, Unpin(g))
        assert f not in disk.live and disk.stopped == [f]
        assert all(o in disk.live for o in others)


async def test_readdir_references_count_like_lookups():
    disk = new_disk()
    f = disk.mkfile(2, b"f")
    async with open_supervisor(name="t") as sup:
        table, _ = await start_kernel_parts(sup, disk, max_vnodes=100)
        await call(table, Pin(f))
        await call(table, Unpin(f, looked_up=f))
        await call(table, Referenced((f, f)))  # two readdirplus entries naming f
        for _ in range(2):
            await call(table, Forget(f, 1))
            assert f in disk.live
        await call(table, Forget(f, 1))
        assert not await call(table, Hold(f))  # no reference left (Hold needs one)


async def test_crashed_vnode_gives_eio_and_is_restarted():
    disk = new_disk()
    f = disk.mkfile(2, b"f")
    g = disk.mkfile(2, b"g")
    async with open_supervisor(name="t") as sup:
        table, _ = await start_kernel_parts(sup, disk, max_vnodes=100)
        assert await call_vnode(table, f, "ping") == f
        disk.crash_on.add(f)
        with pytest.raises(OSError) as ei:
            await call_vnode(table, f, "ping")
        assert ei.value.errno == errno.EIO
        assert await call_vnode(table, g, "ping") == g  # everyone else goes on
        assert await call_vnode(table, f, "ping") == f  # and the crashed one works again
        assert disk.started.count(f) == 2


async def test_table_crash_adopts_running_vnodes_instead_of_duplicating_them():
    disk = new_disk()
    files = [disk.mkfile(2, b"f%d" % i) for i in range(5)]
    async with open_supervisor(name="t", max_restarts=5) as sup:
        table, _ = await start_kernel_parts(sup, disk, max_vnodes=3)
        refs = {}
        for ino in files[:3]:
            refs[ino] = await call(table, Pin(ino))
            await call(table, Unpin(ino, opened=1))  # open handles hold these addresses
        with pytest.raises(CallError):
            await call(table, "not a table message")  # a crash: the table restarts empty
        # The open vnodes are adopted (same addresses), never started twice (FakeVnode
        # asserts one live actor per inode), and not retired under their handles.
        for ino in files:
            await call_vnode(table, ino, "ping")
        for ino in files[:3]:
            assert await call(table, Pin(ino)) is refs[ino]
            await call(table, Unpin(ino))
            assert await call(refs[ino], "ping") == ino
        assert [disk.started.count(i) for i in files[:3]] == [1, 1, 1]
        await call(table, RetireAll())
        assert not disk.live


async def test_pin_of_missing_inode_is_an_error_not_a_slot():
    disk = new_disk()
    async with open_supervisor(name="t") as sup:
        table, _ = await start_kernel_parts(sup, disk, max_vnodes=4)
        with pytest.raises(OSError) as ei:
            await call_vnode(table, 999, "ping")
        assert ei.value.errno in (errno.ENOENT, errno.EIO)
        assert (await call(table, GetStats())).live == 0


# ---------------------------------------------------------------------------------------
# rename coordinator
# ---------------------------------------------------------------------------------------


async def _rename(rename, *args, flags=0):
    return await call(rename, Rename(*args, flags))


async def expect_errno(code, coro):
    with pytest.raises(OSError) as ei:
        await coro
    assert ei.value.errno == code, ei.value


@pytest.mark.parametrize("max_vnodes", [2, 1000])
async def test_rename_file_across_directories(max_vnodes):
    disk = new_disk()
    a, b = disk.mkdir(2, b"a"), disk.mkdir(2, b"b")
    f = disk.mkfile(a, b"f")
    async with open_supervisor(name="t") as sup:
        table, rename = await start_kernel_parts(sup, disk, max_vnodes)
        await _rename(rename, a, b"f", b, b"g")
        assert disk.names(a) == set() and disk.nodes[b].entries[b"g"] == (f, FT_REG)
        assert disk.nodes[a].nlink == 2 and disk.nodes[b].nlink == 2
        # Over an existing file: the old target loses its link.
        h = disk.mkfile(a, b"h")
        await _rename(rename, b, b"g", a, b"h")
        assert disk.nodes[a].entries[b"h"] == (f, FT_REG) and disk.nodes[h].nlink == 0
        assert disk.names(b) == set()
        await call(table, RetireAll())
        assert disk.nodes[f].ctime == 2  # Renamed twice, written back


@pytest.mark.parametrize("max_vnodes", [2, 1000])
async def test_rename_directory_moves_dotdot_and_link_counts(max_vnodes):
    disk = new_disk()
    a, b = disk.mkdir(2, b"a"), disk.mkdir(2, b"b")
    d = disk.mkdir(a, b"d")
    disk.mkdir(d, b"inner")
    async with open_supervisor(name="t") as sup:
        _, rename = await start_kernel_parts(sup, disk, max_vnodes)
        assert disk.nodes[a].nlink == 3
        await _rename(rename, a, b"d", b, b"d2")
        assert disk.nodes[d].entries[b".."] == (b, FT_DIR)
        assert disk.nodes[a].nlink == 2 and disk.nodes[b].nlink == 3
        assert disk.nodes[d].nlink == 3
        # Within one directory: no link count moves.
        await _rename(rename, b, b"d2", b, b"d3")
        assert disk.nodes[b].nlink == 3 and disk.names(b) == {b"d3"}
        # Directory over an empty directory, across parents.
        e = disk.mkdir(a, b"e")
        assert disk.nodes[a].nlink == 3
        await _rename(rename, b, b"d3", a, b"e")
        assert disk.nodes[a].entries[b"e"] == (d, FT_DIR) and disk.nodes[e].nlink == 0
        assert disk.nodes[a].nlink == 3 and disk.nodes[b].nlink == 2
        # Directory over an empty directory in the same parent.
        e2 = disk.mkdir(a, b"e2")
        await _rename(rename, a, b"e", a, b"e2")
        assert disk.nodes[a].entries[b"e2"] == (d, FT_DIR) and disk.nodes[e2].nlink == 0
        assert disk.nodes[a].nlink == 3 and disk.names(a) == {b"e2"}


async def test_rename_errors():
    disk = new_disk()
    a = disk.mkdir(2, b"a")
    sub = disk.mkdir(a, b"sub")
    deep = disk.mkdir(sub, b"deep")
    full = disk.mkdir(2, b"full")
    disk.mkfile(full, b"x")
    empty = disk.mkdir(2, b"empty")
    f = disk.mkfile(2, b"f")
    async with open_supervisor(name="t") as sup:
        _, rename = await start_kernel_parts(sup, disk, 3)
        await expect_errno(errno.ENOENT, _rename(rename, 2, b"nope", 2, b"x"))
        await expect_errno(errno.EINVAL, _rename(rename, 2, b"a", deep, b"a"))
        await expect_errno(errno.EINVAL, _rename(rename, 2, b"a", a, b"a"))
        await expect_errno(errno.EINVAL, _rename(rename, 2, b"a", 2, b"b", flags=3))
        await expect_errno(errno.ENOTEMPTY, _rename(rename, 2, b"empty", 2, b"full"))
        await expect_errno(errno.ENOTDIR, _rename(rename, 2, b"empty", 2, b"f"))
        await expect_errno(errno.EISDIR, _rename(rename, 2, b"f", 2, b"empty"))
        await expect_errno(
            errno.EEXIST, _rename(rename, 2, b"f", 2, b"empty", flags=RENAME_NOREPLACE)
        )
        await expect_errno(errno.ENOENT, _rename(rename, 2, b"f", 2, b"g", flags=RENAME_EXCHANGE))
        await expect_errno(errno.ENAMETOOLONG, _rename(rename, 2, b"f", 2, b"n" * 256))
        await expect_errno(errno.EBUSY, _rename(rename, 2, b"f", 2, b".."))
        await expect_errno(errno.ENOTDIR, _rename(rename, 2, b"f", f, b"x"))
        # Nothing changed by any refusal.
        assert disk.names(2) == {b"a", b"full", b"empty", b"f"}
        assert disk.nodes[2].nlink == 5 and disk.nodes[empty].nlink == 2
        # A deep move the other way round is fine: a/sub/deep -> /deep.
        await _rename(rename, sub, b"deep", 2, b"deep")
        assert disk.nodes[deep].entries[b".."] == (2, FT_DIR) and disk.nodes[2].nlink == 6
        # Same inode under two names: nothing happens.
        disk.nodes[2].entries[b"f2"] = (f, FT_REG)
        disk.nodes[f].nlink = 2
        await _rename(rename, 2, b"f", 2, b"f2")
        assert disk.nodes[2].entries[b"f"] == (f, FT_REG) and disk.nodes[f].nlink == 2


async def test_rename_emlink_leaves_everything_unchanged():
    disk = new_disk()
    a = disk.mkdir(2, b"a")
    busy = disk.mkdir(2, b"busy")
    for i in range(8):
        disk.mkdir(busy, b"s%d" % i)
    assert disk.nodes[busy].nlink == 10
    async with open_supervisor(name="t") as sup:
        _, rename = await start_kernel_parts(sup, disk, 4)
        await expect_errno(errno.EMLINK, _rename(rename, 2, b"a", busy, b"a"))
        assert disk.nodes[busy].nlink == 10 and b"a" in disk.nodes[2].entries
        assert disk.nodes[a].entries[b".."] == (2, FT_DIR)
        # A file does not add to the link count: allowed.
        disk.mkfile(2, b"f")
        await _rename(rename, 2, b"f", busy, b"f")


async def test_rename_exchange():
    disk = new_disk()
    a, b = disk.mkdir(2, b"a"), disk.mkdir(2, b"b")
    d = disk.mkdir(a, b"d")
    f = disk.mkfile(b, b"f")
    async with open_supervisor(name="t") as sup:
        _, rename = await start_kernel_parts(sup, disk, 2)
        await _rename(rename, a, b"d", b, b"f", flags=RENAME_EXCHANGE)
        assert disk.nodes[a].entries[b"d"] == (f, FT_REG)
        assert disk.nodes[b].entries[b"f"] == (d, FT_DIR)
        assert disk.nodes[d].entries[b".."] == (b, FT_DIR)
        assert disk.nodes[a].nlink == 2 and disk.nodes[b].nlink == 3
        # Exchanging a directory with its own ancestor is a loop: refused.
        inner = disk.mkdir(d, b"inner")
        await expect_errno(
            errno.EINVAL, _rename(rename, d, b"inner", 2, b"b", flags=RENAME_EXCHANGE)
        )
        assert disk.nodes[inner].entries[b".."] == (d, FT_DIR)


async def test_concurrent_renames_never_make_a_loop():
    """Two renames that would each be legal alone but together form a cycle
    (a -> b/a and b -> a/b): serialized by the coordinator, one must fail."""
    for _ in range(5):
        disk = new_disk()
        a, b = disk.mkdir(2, b"a"), disk.mkdir(2, b"b")
        async with open_supervisor(name="t") as sup:
            _, rename = await start_kernel_parts(sup, disk, 3)
            results = []

            async def mv(*args, results=results, rename=rename):
                try:
                    await _rename(rename, *args)
                    results.append("ok")
                except OSError as e:
                    results.append(e.errno)

            async with trio.open_nursery() as n:
                n.start_soon(mv, 2, b"a", b, b"a")
                n.start_soon(mv, 2, b"b", a, b"b")
            assert sorted(results, key=str) == sorted(["ok", errno.EINVAL], key=str)
            # Walk up from both: each reaches the root.
            for start in (a, b):
                ino, seen = start, set()
                while ino != 2:
                    assert ino not in seen
                    seen.add(ino)
                    ino = disk.nodes[ino].entries[b".."][0]


# ---------------------------------------------------------------------------------------
# orphan list
# ---------------------------------------------------------------------------------------


async def test_orphan_chain_add_remove_head_and_middle():
    disk = new_disk()
    fs = [disk.mkfile(2, b"o%d" % i) for i in range(4)]
    box = {"last_orphan": 0}
    async with open_supervisor(name="t") as sup:
        table, _ = await start_kernel_parts(sup, disk, 2)
        sb = await sup.start(ChildSpec(name="sb", factory=lambda: FakeSuperblock(box)))
        orph = await sup.start(ChildSpec(name="orph", factory=lambda: OrphanList(sb, table)))
        for ino in fs:
            nxt = await call(orph, AddOrphan(ino))
            disk.nodes[ino].dtime = nxt  # what the vnode does with the reply
            await call(table, Pin(ino))  # orphans are open, hence pinned
            await call(table, Unpin(ino, opened=1))
        assert box["last_orphan"] == fs[3]
        assert await call(orph, ListOrphans()) == tuple(reversed(fs))

        def walk():
            out, ino = [], box["last_orphan"]
            while ino:
                out.append(ino)
                ino = disk.nodes[ino].dtime
            return out

        assert walk() == list(reversed(fs))
        await call(orph, RemoveOrphan(fs[1]))  # middle: predecessor fs[2] must skip it
        await call_vnode(table, fs[2], "ping")  # the cast has been served by now
        assert walk() == [fs[3], fs[2], fs[0]]
        await call(orph, RemoveOrphan(fs[3]))  # head
        assert walk() == [fs[2], fs[0]]
        await call(orph, RemoveOrphan(fs[0]))  # tail
        await call_vnode(table, fs[2], "ping")
        assert walk() == [fs[2]]
        await call(orph, RemoveOrphan(12345))  # not on the list: no-op
        await call(orph, RemoveOrphan(fs[2]))
        assert box["last_orphan"] == 0 and walk() == []


async def test_cleanup_orphans_at_mount_frees_the_chain_and_survives_a_loop():
    disk = new_disk()
    o1, o2, o3 = (disk.mkfile(2, b"o%d" % i) for i in range(3))
    for o in (o1, o2, o3):
        disk.nodes[o].nlink = 0
        del disk.nodes[2].entries[b"o%d" % (o - o1)]
    # o3 -> o2 -> o1 -> o3 (a loop in a hostile image)
    disk.nodes[o3].dtime, disk.nodes[o2].dtime, disk.nodes[o1].dtime = o2, o1, o3
    box = {"last_orphan": o3}

    async def read_inode(ino):
        raw = bytearray(256)
        n = disk.nodes[ino]
        raw[0x14:0x18] = n.dtime.to_bytes(4, "little")
        raw[0x1A:0x1C] = n.nlink.to_bytes(2, "little")
        return bytes(raw)

    async with open_supervisor(name="t") as sup:
        table, _ = await start_kernel_parts(sup, disk, 2)
        sb = await sup.start(ChildSpec(name="sb", factory=lambda: FakeSuperblock(box)))
        orph = await sup.start(ChildSpec(name="orph", factory=lambda: OrphanList(sb, table)))
        freed = await cleanup_orphans(sb, orph, table, read_inode, 10_000, 11)
        assert freed == 3 and disk.reclaimed == [o3, o2, o1]
        assert box["last_orphan"] == 0
        assert await call(orph, ListOrphans()) == ()


async def test_cleanup_orphans_stops_at_a_linked_inode_and_clears_its_dtime():
    disk = new_disk()
    o = disk.mkfile(2, b"o")
    live = disk.mkfile(2, b"live")
    del disk.nodes[2].entries[b"o"]
    disk.nodes[o].nlink = 0
    disk.nodes[o].dtime = live
    disk.nodes[live].dtime = 0
    box = {"last_orphan": o}

    async def read_inode(ino):
        raw = bytearray(256)
        n = disk.nodes[ino]
        raw[0x14:0x18] = n.dtime.to_bytes(4, "little")
        raw[0x1A:0x1C] = n.nlink.to_bytes(2, "little")
        return bytes(raw)

    disk.nodes[live].dtime = 777  # garbage a crash could leave
    async with open_supervisor(name="t") as sup:
        table, _ = await start_kernel_parts(sup, disk, 2)
        sb = await sup.start(ChildSpec(name="sb", factory=lambda: FakeSuperblock(box)))
        orph = await sup.start(ChildSpec(name="orph", factory=lambda: OrphanList(sb, table)))
        assert await cleanup_orphans(sb, orph, table, read_inode, 10_000, 11) == 1
        assert disk.reclaimed == [o] and live in disk.nodes
        assert disk.nodes[live].dtime == 0 and box["last_orphan"] == 0
