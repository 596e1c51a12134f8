"""Vnodes under concurrent use: several tasks create, rename (within and across
directories), unlink and remove directories at once, while stale requests touch freed
inode numbers, the host kernel "forgets" inodes (retiring vnodes) and sync writes every
live vnode back. Each task keeps a model of its own directories; at the end the listings
must match the models and ``e2fsck -fn`` must find the image clean.
"""

from __future__ import annotations

import errno
import logging
import os
import random

import trio
from chanos.fs import vnode as vnode_mod
from chanos.personality.boot import MountOptions, boot
from chanos.personality.syscalls import (
    ROOT_INO,
    Create,
    Forget,
    GetAttr,
    MkDir,
    Release,
    Rename,
    RmDir,
    Unlink,
    Write,
)
from conftest import assert_fsck_clean, debugfs, k_listdir, k_write_file
from trio.testing import wait_all_tasks_blocked


async def _worker(k, tag: int, steps: int, freed: list[int]) -> None:
    rnd = random.Random(tag)
    top = (await k.syscall(MkDir(ROOT_INO, b"w%d" % tag, 0o755))).inode
    dirs = {}
    for side in (b"a", b"b"):
        dirs[side] = (await k.syscall(MkDir(top, side, 0o755))).inode
    model: dict[bytes, dict[bytes, int]] = {b"a": {}, b"b": {}}
    for step in range(steps):
        side = rnd.choice((b"a", b"b"))
        files = model[side]
        op = rnd.random()
        if op < 0.4 or not files:
            name = b"f%d" % step
            h, e = await k.syscall(Create(dirs[side], name, 0o644, os.O_WRONLY | os.O_CREAT))
            await k.syscall(Write(h, 0, name * 50))
            await k.syscall(Release(h))
            files[name] = e.inode
        elif op < 0.7:
            name = rnd.choice(sorted(files))
            other = rnd.choice((b"a", b"b"))
            new = b"r%d" % step
            await k.syscall(Rename(dirs[side], name, dirs[other], new))
            model[other][new] = files.pop(name)
        elif op < 0.9:
            name = rnd.choice(sorted(files))
            await k.syscall(Unlink(dirs[side], name))
            freed.append(files.pop(name))
        else:
            # the host kernel forgets an inode; a stale request looks at a freed one
            ino = rnd.choice(list(files.values()))
            await k.syscall(Forget(ino, 1))
            if freed:
                try:
                    await k.syscall(GetAttr(rnd.choice(freed)))
                except OSError as e:
                    assert e.errno == errno.ENOENT
        if step % 25 == 0:
            await k.sync()
        await trio.sleep(0)
    for side in (b"a", b"b"):
        assert set(await k_listdir(k, dirs[side])) == set(model[side])
    # tear one side down completely
    for name in list(model[b"a"]):
        await k.syscall(Unlink(dirs[b"a"], name))
    await k.syscall(RmDir(top, b"a"))


def _no_failed_write_backs(caplog) -> None:
    bad = [
        r.getMessage()
        for r in caplog.records
        if "failed writing back" in r.getMessage() or "CallCycle" in r.getMessage()
    ]
    assert not bad, bad


async def test_concurrent_changes_keep_the_image_consistent(ext4_image, caplog):
    caplog.set_level(logging.WARNING)
    img = ext4_image("32M", 1024)
    freed: list[int] = []
    async with boot(img, MountOptions(max_vnodes=8)) as k, trio.open_nursery() as n:
        for tag in range(4):
            n.start_soon(_worker, k, tag, 120, freed)
    # A sync meeting a vnode whose turn waits on the vnode table must wait for that turn,
    # not fail the write-back with a call cycle.
    _no_failed_write_backs(caplog)
    assert_fsck_clean(img)


async def test_sync_waits_for_vnodes_mid_turn_and_makes_their_changes_durable(
    ext4_image, monkeypatch, caplog
):
    """Two directories are in the middle of an unlink when sync starts: ``da`` has called
    its child and is still working; ``db`` is about to call its child (through the vnode
    table). Sync must write both back after their turns, without a call cycle, and the
    image on disk (read by debugfs while still mounted) must show both unlinks."""
    caplog.set_level(logging.WARNING)
    img = ext4_image("16M", 1024)
    real_call_vnode = vnode_mod.call_vnode
    gates: dict[int, tuple[str, trio.Event, trio.Event]] = {}

    async def gated_call_vnode(table, ino, msg):
        gate = gates.pop(ino, None)
        if gate is None:
            return await real_call_vnode(table, ino, msg)
        when, arrived, go = gate
        if when == "before":
            arrived.set()
            await go.wait()
            return await real_call_vnode(table, ino, msg)
        reply = await real_call_vnode(table, ino, msg)
        arrived.set()
        await go.wait()
        return reply

    monkeypatch.setattr(vnode_mod, "call_vnode", gated_call_vnode)
    async with boot(img, MountOptions(max_vnodes=8)) as k:
        da = (await k.syscall(MkDir(ROOT_INO, b"da", 0o755))).inode
        db = (await k.syscall(MkDir(ROOT_INO, b"db", 0o755))).inode
        fa = await k_write_file(k, da, b"a", b"A" * 3000)
        fb = await k_write_file(k, db, b"b", b"B" * 3000)
        await k_write_file(k, da, b"keep", b"K" * 100)
        await k.sync()
        a_in, a_go, b_in, b_go = trio.Event(), trio.Event(), trio.Event(), trio.Event()
        gates[fa] = ("after", a_in, a_go)
        gates[fb] = ("before", b_in, b_go)
        synced = trio.Event()

        async def sync() -> None:
            await k.sync()
            synced.set()

        async with trio.open_nursery() as n:
            n.start_soon(k.syscall, Unlink(da, b"a"))
            await a_in.wait()
            n.start_soon(k.syscall, Unlink(db, b"b"))
            await b_in.wait()
            n.start_soon(sync)
            await wait_all_tasks_blocked()  # sync has reached da, busy in its turn
            b_go.set()  # db's turn now asks the vnode table for its child
            await wait_all_tasks_blocked()
            a_go.set()
            await synced.wait()
            # Still mounted: what sync put on disk.
            names_a = set(debugfs(img, "ls /da").split())
            names_b = set(debugfs(img, "ls /db").split())
        assert b"keep" in names_a and b"a" not in names_a
        assert b"b" not in names_b
        _no_failed_write_backs(caplog)
        # b's inode dropped its last link after sync had written it back: an unlinked
        # inode the host still refers to is written at its next write-back, so the next
        # sync records it unlinked (on the orphan list, for a crash before it is freed).
        await k.sync()
        assert b"Links: 0" in debugfs(img, f"stat <{fb}>")
        assert await k_listdir(k, db) == {}
    assert_fsck_clean(img)
