"""Requests sent to a live vnode without a pin (the kernel's fast path, chanos.fs.vnode_table
"The fast path"): one message instead of Pin + request + Unpin, the same answers, exact
lookup counts, and no request lost or failed while the table retires the vnode serving it.
"""

from __future__ import annotations

import errno
import random

import trio
from chanos.fs.vnode_table_protocol import NEEDS_PIN, IsLive, Unpinned
from chanos.personality import call
from chanos.personality.boot import MountOptions, boot
from chanos.personality.syscalls import (
    ROOT_INO,
    Forget,
    GetAttr,
    GetXattr,
    Lookup,
    Open,
    Release,
    SetAttr,
    SetXattr,
    StatFs,
    Unlink,
)
from conftest import Errno, assert_fsck_clean, k_write_file


async def test_live_vnode_answers_unpinned_requests_and_refers_back_when_it_cannot(image):
    async with boot(image, MountOptions()) as k:
        ino = await k_write_file(k, ROOT_INO, b"f", b"x" * 100)  # one lookup (Create)
        ref = k._refs.get(ino)
        assert ref is not None
        attr = await call(ref, Unpinned(GetAttr(ino)))
        assert attr == await k.syscall(GetAttr(ino)) and attr.size == 100
        # Unlinked while the host still refers to it: kept (held), still served.
        await k.syscall(Unlink(ROOT_INO, b"f"))
        assert (await call(ref, Unpinned(GetAttr(ino)))).nlink == 0
        await k.syscall(Forget(ino, 1))
        # Freed: its vnode is retired; the kept address is stale and dropped on use.
        assert not await call(k.table, IsLive(ino)) and not ref.alive
        with Errno(errno.ENOENT):
            await k.syscall(GetAttr(ino))
        assert k._refs[ino] is not ref  # the dead address was dropped
    assert_fsck_clean(image)


async def test_vnode_restarted_after_a_crash_refers_unpinned_requests_back(image, monkeypatch):
    # A restarted vnode asks the table its open count before its first request: that
    # request must come pinned (the table may be retiring an unpinned vnode).
    from chanos.fs import vnode as vnode_mod

    real_handle = vnode_mod.VnodeActor.handle
    crash = []

    async def flaky_handle(self, msg):
        if crash and isinstance(msg, Unpinned):
            crash.clear()
            raise RuntimeError("injected crash")
        return await real_handle(self, msg)

    monkeypatch.setattr(vnode_mod.VnodeActor, "handle", flaky_handle)
    async with boot(image, MountOptions()) as k:
        ino = await k_write_file(k, ROOT_INO, b"f", b"x" * 7)
        ref = k._refs[ino]
        crash.append(1)
        with Errno(errno.EIO):
            await k.syscall(GetAttr(ino))
        assert ref.alive  # restarted in place, same address
        assert await call(ref, Unpinned(GetAttr(ino))) is NEEDS_PIN
        assert (await k.syscall(GetAttr(ino))).size == 7  # pinned: told its open count
        assert (await call(ref, Unpinned(GetAttr(ino)))).size == 7
    assert_fsck_clean(image)


async def test_unpinned_lookups_count_references_exactly(image):
    async with boot(image, MountOptions()) as k:
        free0 = (await k.syscall(StatFs())).f_ffree
        ino = await k_write_file(k, ROOT_INO, b"f", b"x")  # one lookup (Create)
        assert k._refs.get(ROOT_INO) is not None  # the lookups below go unpinned
        for _ in range(3):
            assert (await k.syscall(Lookup(ROOT_INO, b"f"))).inode == ino
        await k.syscall(Unlink(ROOT_INO, b"f"))
        await k.syscall(Forget(ino, 3))
        assert (await k.syscall(StatFs())).f_ffree == free0 - 1  # one reference left
        await k.syscall(Forget(ino, 1))
        assert (await k.syscall(StatFs())).f_ffree == free0
    assert_fsck_clean(image)


async def test_unpinned_requests_under_retirement_pressure(image, caplog):
    # Two live vnodes at most, and two tasks: one sends the unpinned kinds of request to
    # every file, the other opens and releases files, so the vnodes being asked are
    # retired and started again all the time, often with a request on the way.
    n = 12
    async with boot(image, MountOptions(max_vnodes=2)) as k:
        inos = [await k_write_file(k, ROOT_INO, b"f%d" % i, b"x" * (i + 1)) for i in range(n)]
        for i in range(0, n, 2):
            await k.syscall(SetXattr(inos[i], b"user.i", b"%d" % i, 0))
        looked_up = [1] * n  # each Create is one reference
        rng = random.Random(5)

        async def ask() -> None:
            for _ in range(300):
                i = rng.randrange(n)
                ino = inos[i]
                match rng.randrange(4):
                    case 0:
                        a = await k.syscall(GetAttr(ino))
                        assert a.ino == ino and a.size == i + 1
                    case 1:
                        if i % 2:
                            with Errno(errno.ENODATA):
                                await k.syscall(GetXattr(ino, b"user.i"))
                        else:
                            assert await k.syscall(GetXattr(ino, b"user.i")) == b"%d" % i
                    case 2:
                        assert (await k.syscall(Lookup(ROOT_INO, b"f%d" % i))).inode == ino
                        looked_up[i] += 1
                    case 3:
                        a = await k.syscall(SetAttr(ino, mode=0o600 + i % 8))
                        assert a.mode & 0o777 == 0o600 + i % 8
                await trio.sleep(0)

        async def churn() -> None:
            for j in range(300):
                ino = inos[j % n]
                h = await k.syscall(Open(ino, 0))
                await trio.sleep(0)
                await k.syscall(Release(h))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(ask)
            nursery.start_soon(churn)
        stats = await k.vnode_stats()
        assert stats.retired > n
        # Every reference was counted: unlinked files are kept until the last Forget.
        free0 = (await k.syscall(StatFs())).f_ffree
        for i, ino in enumerate(inos):
            await k.syscall(Unlink(ROOT_INO, b"f%d" % i))
            await k.syscall(Forget(ino, looked_up[i] - 1))
        assert (await k.syscall(StatFs())).f_ffree == free0
        for ino in inos:
            await k.syscall(Forget(ino, 1))
        assert (await k.syscall(StatFs())).f_ffree == free0 + n
    bad = [r.getMessage() for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")]
    assert not bad, bad
    assert_fsck_clean(image)


async def test_live_file_without_attributes_answers_like_the_store(image):
    async with boot(image, MountOptions()) as k:
        ino = await k_write_file(k, ROOT_INO, b"f", b"x")
        assert k._refs.get(ino) is not None
        with Errno(errno.ENODATA):
            await k.syscall(GetXattr(ino, b"security.capability"))
        with Errno(errno.EOPNOTSUPP):
            await k.syscall(GetXattr(ino, b"nosuch.name"))
        with Errno(errno.ERANGE):
            await k.syscall(GetXattr(ino, b"user." + b"n" * 300))
        await k.syscall(SetXattr(ino, b"user.a", b"1", 0))
        assert await k.syscall(GetXattr(ino, b"user.a")) == b"1"
        with Errno(errno.ENODATA):
            await k.syscall(GetXattr(ino, b"user.b"))
    assert_fsck_clean(image)
