"""The volume as actors: mount on a real driver, allocate through the policy, unmount,
then e2fsprogs (e2fsck -fn, dumpe2fs, debugfs) checks what reached the image."""

from __future__ import annotations

import errno
import os
import re
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from chanos.drivers import (
    BlockDevice,
    ClearErrors,
    FaultInjectionDriver,
    ImageFileDriver,
    InjectError,
)
from chanos.fs import group_protocol as gp
from chanos.fs import superblock_protocol as sp
from chanos.fs.volume import Volume, mount
from chanos.personality import PERMANENT, CallError, ChildSpec, call, open_supervisor
from conftest import assert_fsck_clean


def dumpe2fs(image: Path) -> tuple[dict[str, str], str]:
    out = subprocess.run(["dumpe2fs", str(image)], capture_output=True, text=True).stdout
    hdr = {}
    for line in out.partition("\n\n\n")[0].splitlines():
        k, sep, v = line.partition(":")
        if sep:
            hdr[k.strip()] = v.strip()
    return hdr, out


@asynccontextmanager
async def mounted(
    image: Path, read_only: bool = False, faults: list | None = None, **kw
) -> AsyncIterator[Volume]:
    """Mount ``image`` through the image-file driver; when ``faults`` is a list, through a
    fault-injection driver stacked on it, whose address is appended to the list."""
    async with open_supervisor(name="test") as sup:
        drv = await sup.start(
            ChildSpec(name="driver", factory=lambda: ImageFileDriver(str(image)), restart=PERMANENT)
        )
        top = drv
        if faults is not None:
            top = await sup.start(
                ChildSpec(
                    name="faults",
                    factory=lambda: FaultInjectionDriver(drv, volatile=False),
                    restart=PERMANENT,
                )
            )
            faults.append(top)
        vol = await mount(BlockDevice(top), read_only, supervisor=sup, **kw)
        try:
            yield vol
        finally:
            await vol.unmount()
            if top is not drv:
                await top.stop()
            await drv.stop()


async def test_mount_unmount_state_and_statfs(ext4_image) -> None:
    img = ext4_image("64M", 4096)
    before, _ = dumpe2fs(img)
    async with mounted(img) as vol:
        hdr, _ = dumpe2fs(img)
        assert hdr["Filesystem state"] == "not clean"
        assert hdr["Mount count"] == "1"
        s = await vol.statfs()
        assert s.f_bfree == int(before["Free blocks"])
        assert s.f_blocks == int(before["Block count"]) - int(before["Overhead clusters"])
        assert s.f_ffree == int(before["Free inodes"])
        assert vol.geometry.group_count == 1 and not vol.read_only
    after, _ = dumpe2fs(img)
    assert after["Filesystem state"] == "clean"
    assert after["Mount count"] == "1"
    assert after["Last checked"] == before["Last checked"]
    assert_fsck_clean(img)


@pytest.mark.parametrize("bs", [4096, 1024])
async def test_allocate_and_free_everything_is_fsck_clean(ext4_image, bs: int) -> None:
    img = ext4_image("64M", bs)
    before, _ = dumpe2fs(img)
    async with mounted(img) as vol:
        alloc = vol.allocator
        runs = []
        total = 0
        goal = vol.geometry.first_data_block
        while True:
            try:
                start, n = await alloc.allocate(goal, 4096)
            except OSError as e:
                assert e.errno == errno.ENOSPC
                break
            runs.append((start, n))
            total += n
            goal = start + n
        assert total == int(before["Free blocks"])
        s = await vol.statfs()
        assert s.f_bfree == 0 and s.f_bavail == 0
        # Free in big pieces that span group boundaries where runs are adjacent.
        for start, n in runs:
            await alloc.free(start, n)
        s = await vol.statfs()
        assert s.f_bfree == int(before["Free blocks"])
    after, _ = dumpe2fs(img)
    assert after["Free blocks"] == before["Free blocks"]
    assert_fsck_clean(img)


async def test_directory_spreading_and_file_locality(ext4_image) -> None:
    img = ext4_image("64M", 1024)  # 8 groups of 2048 inodes
    async with mounted(img) as vol:
        alloc = vol.allocator
        ipg = vol.geometry.inodes_per_group
        dirs = [await alloc.alloc_inode(2, is_dir=True) for _ in range(6)]
        groups = [(d - 1) // ipg for d in dirs]
        assert len(set(groups)) == 6, groups  # spread: each new directory its own group
        # Files go next to their parent directory.
        for d in dirs:
            f = await alloc.alloc_inode(d, is_dir=False)
            assert (f - 1) // ipg == (d - 1) // ipg
        # Blocks near a goal in the file's group.
        goal = alloc.goal_for_inode(dirs[2])
        start, n = await alloc.allocate(goal, 16)
        assert alloc.group_of_block(start) == groups[2] and n == 16
        counts = await alloc.group_counts()
        assert sum(c.used_dirs for c in counts) == 2 + 6
        await alloc.free(start, n)
        for d in dirs:
            await alloc.free_inode(d, is_dir=True)
            await alloc.free_inode(d + 1, is_dir=False)
        with pytest.raises(OSError) as ei:
            await alloc.free_inode(dirs[0], is_dir=True)
        assert ei.value.errno == errno.EUCLEAN
    hdr, _ = dumpe2fs(img)
    # The double free above was an fs error: recorded, and the image stays consistent.
    assert hdr["Filesystem state"] == "clean with errors"
    assert hdr["FS Error count"] == "1"
    assert_fsck_clean(img)


async def test_a_file_skips_full_groups_without_asking_them(ext4_image) -> None:
    """Once its directory's group is full, a new file's inode comes from the next group
    that has free inodes, found from the superblock's counts: the full groups in between
    are not asked one by one on every create."""
    from chanos.personality import trace

    img = ext4_image("64M", 1024)  # 8 groups of 2048 inodes
    async with mounted(img) as vol:
        alloc = vol.allocator
        ipg = vol.geometry.inodes_per_group
        got: list[int] = []
        while not got or (got[-1] - 1) // ipg < 2:  # until groups 0 and 1 are full
            got.append(await alloc.alloc_inode(2, is_dir=False))
        await alloc.free_inode(got.pop(), is_dir=False)
        counts = await alloc.group_counts()
        assert counts[0].free_inodes == counts[1].free_inodes == 0
        sent: list[str] = []
        trace.enable(record=False, hooks=[lambda ev: ev.kind == "send" and sent.append(ev.msg)])
        try:
            ino = await alloc.alloc_inode(2, is_dir=False)
        finally:
            trace.disable()
        assert (ino - 1) // ipg == 2
        asked = [m for m in sent if m.startswith("AllocInode")]
        assert len(asked) == 2, sent  # the full home group, then group 2; not group 1
        for n in [*got, ino]:
            await alloc.free_inode(n, is_dir=False)
    assert_fsck_clean(img)


async def test_groups_report_counts_past_a_slack_and_statfs_stays_exact(ext4_image) -> None:
    """A group sends the superblock its counts only once they have moved past the slack,
    or a directory was made, or the group filled up; statfs, sync and unmount still see
    the exact counts (every group is asked first), and e2fsck agrees."""
    from chanos.fs.block_group import BLOCK_SLACK, INODE_SLACK
    from chanos.personality import trace

    img = ext4_image("64M", 1024)  # 8 groups of 2048 inodes, 8192 blocks
    async with mounted(img) as vol:
        alloc = vol.allocator
        before = await vol.statfs()
        heard_before = await alloc.group_counts()
        sent: list[str] = []

        def reports() -> int:
            return len([m for m in sent if m.startswith("GroupCountsChanged")])

        trace.enable(record=False, hooks=[lambda ev: ev.kind == "send" and sent.append(ev.msg)])
        try:
            files = [await alloc.alloc_inode(2, is_dir=False) for _ in range(INODE_SLACK - 1)]
            runs = [await alloc.allocate(20000, 1) for _ in range(BLOCK_SLACK - 1)]
            assert reports() == 0
            assert await alloc.group_counts() == heard_before  # nothing heard yet
            # One more of each passes the slack; a new directory is reported at once.
            files.append(await alloc.alloc_inode(2, is_dir=False))
            runs.append(await alloc.allocate(20000, 1))
            assert reports() == 2
            d = await alloc.alloc_inode(2, is_dir=True)
            assert reports() == 3
        finally:
            trace.disable()
        heard = await alloc.group_counts()
        assert sum(c.used_dirs for c in heard) == sum(c.used_dirs for c in heard_before) + 1
        assert heard[0].free_inodes == heard_before[0].free_inodes - INODE_SLACK
        assert heard[2].free_blocks == heard_before[2].free_blocks - BLOCK_SLACK
        # statfs asks every group first: exact, whatever is pending.
        await alloc.free_inode(files.pop(), is_dir=False)
        now = await vol.statfs()
        assert now.f_ffree == before.f_ffree - INODE_SLACK  # files + the directory
        assert now.f_bfree == before.f_bfree - BLOCK_SLACK
        await alloc.free_inode(d, is_dir=True)
        for start, n in runs:
            await alloc.free(start, n)
        for ino in files:
            await alloc.free_inode(ino, is_dir=False)
        assert await vol.statfs() == before
    assert_fsck_clean(img)  # the counts on disk are exact after unmount


async def test_inode_exhaustion_gives_enospc(ext4_image) -> None:
    img = ext4_image("8M", 1024, extra_args=["-N", "64"])
    async with mounted(img) as vol:
        got = []
        with pytest.raises(OSError) as ei:
            while True:
                got.append(await vol.alloc_inode(2, is_dir=False))
        assert ei.value.errno == errno.ENOSPC
        assert len(got) == len(set(got))
        assert (await vol.statfs()).f_ffree == 0
        for ino in got:
            await vol.free_inode(ino, is_dir=False)
    assert_fsck_clean(img)


async def test_group_actor_restart_keeps_allocations(ext4_image) -> None:
    img = ext4_image("64M", 4096)
    async with mounted(img) as vol:
        g0 = vol.groups[0]
        a = await vol.alloc_inode(2, is_dir=True)
        b = await vol.alloc_inode(2, is_dir=False)
        run = await vol.allocator.allocate(5000, 8)
        # An inode record acknowledged but not yet written back (only in the actor's cache).
        blank = await vol.read_inode(b)
        rec = bytes([0x5A]) * 256
        await vol.write_inode(b, rec)
        itable = int(re.search(r"Inode table at (\d+)", _group0(img)).group(1))
        with open(img, "rb") as f:
            assert os.pread(f.fileno(), 256, itable * 4096 + (b - 1) * 256) == blank
        # A malformed message crashes the group actor (not an OSError): it is restarted.
        with pytest.raises(CallError):
            await call(g0, gp.WriteInode(a, None))  # type: ignore[arg-type]
        # The restarted actor kept the dirty block and wrote it back as it started.
        assert await vol.read_inode(b) == rec
        await vol.device.flush()  # the driver's write cache; no Sync was sent to the group
        with open(img, "rb") as f:
            assert os.pread(f.fileno(), 256, itable * 4096 + (b - 1) * 256) == rec
        await vol.write_inode(b, blank)
        c = await vol.alloc_inode(2, is_dir=False)
        assert c not in (a, b)
        run2 = await vol.allocator.allocate(5000, 8)
        assert run2[0] >= run[0] + run[1] or run2[0] + run2[1] <= run[0]
        counts = (await vol.allocator.group_counts())[0]
        assert counts.used_dirs == 3  # root, lost+found, a: survived the restart
        # The superblock actor crashes too: counters, orphan head survive its restart.
        await vol.set_last_orphan(b)
        before = await vol.statfs()
        with pytest.raises(CallError):
            await call(vol.superblock, sp.SetLastOrphan("x"))  # type: ignore[arg-type]
        assert await vol.statfs() == before
        assert await vol.get_last_orphan() == b
        await vol.set_last_orphan(0)
        for ino, is_dir in ((a, True), (b, False), (c, False)):
            await vol.free_inode(ino, is_dir)
        await vol.allocator.free(*run)
        await vol.allocator.free(*run2)
    assert_fsck_clean(img)


async def test_read_only_mount_writes_nothing(ext4_image) -> None:
    img = ext4_image("16M", 4096)
    raw = img.read_bytes()
    async with mounted(img, read_only=True) as vol:
        assert vol.read_only
        root = await vol.read_inode(2)
        assert int.from_bytes(root[0:2], "little") >> 12 == 0o04
        with pytest.raises(OSError) as ei:
            await vol.alloc_inode(2, is_dir=False)
        assert ei.value.errno == errno.EROFS
        with pytest.raises(OSError) as ei:
            await vol.set_last_orphan(12)
        assert ei.value.errno == errno.EROFS
        assert (await vol.statfs()).f_files == 4096
    assert img.read_bytes() == raw


async def test_unknown_ro_compat_mounts_read_only(ext4_image) -> None:
    img = ext4_image("16M", 4096, features=("metadata_csum",))
    raw = img.read_bytes()
    async with mounted(img) as vol:
        assert vol.read_only and "metadata_csum" in vol.read_only_reason
    assert img.read_bytes() == raw


async def test_free_run_spanning_groups_and_bad_frees(ext4_image) -> None:
    img = ext4_image("64M", 1024)
    before, _ = dumpe2fs(img)
    async with mounted(img) as vol:
        alloc = vol.allocator
        assert await alloc.allocate(32760, 9) == (32760, 9)  # the end of group 3
        assert await alloc.allocate(32769, 10) == (32769, 10)  # the start of group 4
        await vol.collect_counts()  # changes this small wait for a later report
        counts = await alloc.group_counts()
        assert counts[3].free_blocks == 7934 - 9 and counts[4].free_blocks == 8192 - 10
        await alloc.free(32760, 19)  # one run over the group boundary
        await vol.collect_counts()
        counts = await alloc.group_counts()
        assert counts[3].free_blocks == 7934 and counts[4].free_blocks == 8192
        for start, count in ((65530, 10), (0, 1), (24577, 1), (260, 1)):
            with pytest.raises(OSError) as ei:
                await alloc.free(start, count)  # past the end; block 0; sb backup; a bitmap
            assert ei.value.errno == errno.EUCLEAN
        assert (await vol.statfs()).f_bfree == int(before["Free blocks"])
    assert_fsck_clean(img)


async def test_failed_writes_leave_nothing_half_done(ext4_image) -> None:
    img = ext4_image("64M", 1024)
    before, _ = dumpe2fs(img)
    faults: list = []
    async with mounted(img, faults=faults, write_through=True) as vol:
        fdrv = faults[0]
        bb1 = 260  # group 1's block bitmap (flex_bg: in group 0), see dumpe2fs
        assert (await vol.allocator.group_counts())[1].free_blocks == 7934
        await call(fdrv, InjectError(op="write", start=bb1 * 1024, end=bb1 * 1024 + 1024, count=1))
        with pytest.raises(OSError) as ei:
            await vol.allocator.allocate(9000, 10)
        assert ei.value.errno == errno.EIO
        counts = (await vol.allocator.group_counts())[1]
        assert counts.free_blocks == 7934  # undone: not allocated, not reported
        assert await vol.allocator.allocate(9000, 10) == (9000, 10)  # the same run again
        await vol.allocator.free(9000, 10)
        # A failed inode write: the record reads back as it was on disk.
        root = await vol.read_inode(2)
        itable = int(re.search(r"Inode table at (\d+)", _group0(img)).group(1))
        await call(fdrv, InjectError(op="write", start=itable * 1024, end=(itable + 1) * 1024))
        with pytest.raises(OSError):
            await vol.write_inode(2, b"\xff" * 256)
        await call(fdrv, ClearErrors())
        assert await vol.read_inode(2) == root
    after, _ = dumpe2fs(img)
    assert after["Free blocks"] == before["Free blocks"]
    assert after["Free inodes"] == before["Free inodes"]
    assert_fsck_clean(img)


async def test_inode_record_travels_with_alloc_and_free(ext4_image) -> None:
    img = ext4_image("64M", 1024)
    faults: list = []
    async with mounted(img, faults=faults, write_through=True) as vol:
        fdrv = faults[0]
        free0 = (await vol.statfs()).f_ffree
        rec = bytes([0x11]) * 256
        ino = await vol.allocator.alloc_inode(2, False, rec)
        assert await vol.read_inode(ino) == rec  # allocated and written in one message
        gone = bytes(0x14) + (1_700_000_000).to_bytes(4, "little") + bytes(256 - 0x18)  # dtime
        await vol.allocator.free_inode(ino, False, gone)
        assert await vol.read_inode(ino) == gone and (await vol.statfs()).f_ffree == free0
        # The record's write fails: the inode is given back, nothing is half done.
        itable = int(re.search(r"Inode table at (\d+)", _group0(img)).group(1))
        span = (itable * 1024, (itable + 512) * 1024)
        await call(fdrv, InjectError(op="write", start=span[0], end=span[1], count=1))
        with pytest.raises(OSError) as ei:
            await vol.allocator.alloc_inode(2, False, rec)
        assert ei.value.errno == errno.EIO
        assert (await vol.statfs()).f_ffree == free0
        assert await vol.allocator.alloc_inode(2, False) == ino  # the same number again
        # A failed final record frees nothing.
        await call(fdrv, InjectError(op="write", start=span[0], end=span[1], count=1))
        with pytest.raises(OSError):
            await vol.allocator.free_inode(ino, False, gone)
        assert (await vol.statfs()).f_ffree == free0 - 1
        await vol.allocator.free_inode(ino, False, gone)
    assert_fsck_clean(img)


def _group0(img: Path) -> str:
    return dumpe2fs(img)[1].split("Group 1:")[0]


@pytest.mark.parametrize(
    "features",
    [
        ("^metadata_csum", "^64bit"),  # 32-byte group descriptors
        ("^metadata_csum", "^flex_bg"),  # every group's bitmaps and table in the group
        ("^metadata_csum", "^has_journal", "^resize_inode"),
    ],
    ids=["32bit-desc", "no-flex_bg", "no-journal"],
)
async def test_other_layouts_allocate_and_stay_fsck_clean(ext4_image, features) -> None:
    img = ext4_image("32M", 1024, features=features)
    before, _ = dumpe2fs(img)
    async with mounted(img) as vol:
        alloc = vol.allocator
        dirs = [await alloc.alloc_inode(2, is_dir=True) for _ in range(3)]
        runs = [await alloc.allocate(alloc.goal_for_inode(d), 300) for d in dirs]
        for (start, n), d in zip(runs, dirs, strict=True):
            assert alloc.group_of_block(start) == alloc.group_of_inode(d) and n == 300
        s = await vol.statfs()
        assert s.f_bfree == int(before["Free blocks"]) - 900
        for (start, n), d in zip(runs, dirs, strict=True):
            await alloc.free(start, n)
            await alloc.free_inode(d, is_dir=True)
    after, _ = dumpe2fs(img)
    assert (after["Free blocks"], after["Free inodes"]) == (
        before["Free blocks"],
        before["Free inodes"],
    )
    assert_fsck_clean(img)


async def test_a_files_runs_travel_with_its_inode_free(ext4_image) -> None:
    """FreeInode carries the runs of the file's data: those in the inode's group go in the
    same message, the others on their own first; a run that cannot be freed leaves the
    record and the inode as they were."""
    img = ext4_image("64M", 1024)  # groups of 8,192 blocks
    before, _ = dumpe2fs(img)
    async with mounted(img) as vol:
        alloc = vol.allocator
        bfree0 = (await vol.statfs()).f_bfree
        rec = bytes([0x11]) * 256
        gone = bytes(0x14) + (1_700_000_000).to_bytes(4, "little") + bytes(256 - 0x18)
        ino = await alloc.alloc_inode(2, False, rec)
        assert vol.geometry.group_of_inode(ino) == 0
        near = await alloc.allocate(1000, 3)  # in group 0, the inode's
        far = await alloc.allocate(32769, 2)  # in group 4
        assert vol.geometry.group_of_block(near[0]) == 0 and far == (32769, 2)
        await alloc.free_inode(ino, False, gone, [near, far])
        assert await vol.read_inode(ino) == gone
        s = await vol.statfs()
        assert s.f_bfree == bfree0 and s.f_ffree == int(before["Free inodes"])

        # A run already free: nothing of the inode changes; the run before it is freed.
        ino = await alloc.alloc_inode(2, False, rec)
        near = await alloc.allocate(1000, 3)
        free_already = (near[0] + 100, 1)
        with pytest.raises(OSError) as ei:
            await alloc.free_inode(ino, False, gone, [near, free_already])
        assert ei.value.errno == errno.EUCLEAN
        assert await vol.read_inode(ino) == rec
        s = await vol.statfs()
        assert s.f_bfree == bfree0 and s.f_ffree == int(before["Free inodes"]) - 1
        await alloc.free_inode(ino, False, gone)
    after, _ = dumpe2fs(img)
    assert after["Free blocks"] == before["Free blocks"]
    assert after["Free inodes"] == before["Free inodes"]
    assert_fsck_clean(img)


async def test_records_of_many_inodes_come_in_order_and_failures_stay_in_their_place(
    ext4_image,
) -> None:
    img = ext4_image("64M", 1024)
    group1 = dumpe2fs(img)[1].split("Group 1:")[1].split("Group 2:")[0]
    itable1 = int(re.search(r"Inode table at (\d+)", group1).group(1))
    faults: list = []
    async with mounted(img, faults=faults, write_through=True) as vol:
        per_group = vol.geometry.inodes_per_group
        a, b = 20, per_group + 1  # the first inodes of groups 0 and 1 past the reserved ones
        await vol.write_inode(a, bytes([0xA0]) * 256)
        inos = [b, 2, 0, a, vol.geometry.inodes_count + 1, 2]
        # Group 1's table block cannot be read: its inode gets the error, the rest come.
        await call(
            faults[0], InjectError(op="read", start=itable1 * 1024, end=itable1 * 1024 + 1024)
        )
        got = await vol.read_inodes(inos)
        root = await vol.read_inode(2)
        assert got[1] == got[5] == root and got[3] == bytes([0xA0]) * 256
        assert isinstance(got[0], OSError) and got[0].errno == errno.EIO
        assert isinstance(got[2], OSError) and got[2].errno == errno.EUCLEAN
        assert isinstance(got[4], OSError) and got[4].errno == errno.EUCLEAN
        await call(faults[0], ClearErrors())
        got = await vol.read_inodes(inos)
        assert got[0] == await vol.read_inode(b) and len(got[0]) == 256
        # One message per group holds all of that group's inodes, in the order asked.
        assert await call(vol.groups[0], gp.ReadInodes((a, 2))) == [bytes([0xA0]) * 256, root]
