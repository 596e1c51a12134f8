"""Inode lifetime through the FUSE front end: an unlinked inode the host kernel still
references keeps its number (a new file never gets it) and answers stat and utimes with
nlink 0; once the host forgets it, it is freed (the free-inode count comes back).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "programs"))

from mountlib import chanos_mount

pytestmark = pytest.mark.mount
__all__ = ["chanos_mount"]  # the fixture, used by name


def wait_free_inodes(mnt: Path, want: int, timeout: float = 30.0) -> int:
    """statvfs f_ffree once it reaches ``want`` (Forget arrives when the host evicts)."""
    deadline = time.monotonic() + timeout
    while True:
        got = os.statvfs(mnt).f_ffree
        if got == want or time.monotonic() > deadline:
            return got
        time.sleep(0.05)


def test_removed_cwd_keeps_its_number_until_forgotten(chanos_mount):
    m = chanos_mount
    mnt = m.mnt
    free0 = os.statvfs(mnt).f_ffree
    (mnt / "d").mkdir()
    here = os.getcwd()
    os.chdir(mnt / "d")  # a lookup reference of the host kernel, no open handle
    try:
        old = os.stat(".").st_ino
        os.rmdir(mnt / "d")
        st = os.stat(".")
        assert st.st_ino == old and st.st_nlink == 0
        # New files and directories never get the number the host still refers to.
        made = []
        for i in range(8):
            (mnt / f"n{i}").mkdir()
            made.append(os.stat(mnt / f"n{i}").st_ino)
            (mnt / f"f{i}").write_bytes(b"x")
            made.append(os.stat(mnt / f"f{i}").st_ino)
        assert old not in made
        with pytest.raises(FileNotFoundError):
            (Path(".") / "inside").write_bytes(b"no")  # a removed directory takes nothing
    finally:
        os.chdir(here)
    for i in range(8):
        (mnt / f"n{i}").rmdir()
        (mnt / f"f{i}").unlink()
    # Nothing refers to any of them any more: all freed once the host has forgotten them.
    assert wait_free_inodes(mnt, free0) == free0
    m.unmount()


def test_unlinked_open_file_answers_stat_and_utimes_and_is_freed(chanos_mount):
    m = chanos_mount
    mnt = m.mnt
    free0 = os.statvfs(mnt).f_ffree
    f = mnt / "f"
    fd = os.open(f, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.write(fd, b"data" * 1000)
        old = os.fstat(fd).st_ino
        f.unlink()
        t = 1_600_000_000_123_456_789
        os.utime(fd, ns=(t, t))  # a SETATTR on the unlinked inode
        st = os.fstat(fd)
        assert st.st_nlink == 0 and st.st_mtime_ns == t and st.st_size == 4000
        (mnt / "g").write_bytes(b"new")
        new = os.stat(mnt / "g")
        assert new.st_ino != old and new.st_mtime_ns != t
        assert os.pread(fd, 4, 0) == b"data"
    finally:
        os.close(fd)
    (mnt / "g").unlink()
    assert wait_free_inodes(mnt, free0) == free0
    m.unmount()


def test_write_close_unlink_create_cycles_stay_consistent(chanos_mount):
    """The pattern that sent late SETATTRs (cached times) for freed inodes, over and over:
    every file keeps one link, all are freed in the end, the image is clean."""
    m = chanos_mount
    mnt = m.mnt
    free0 = os.statvfs(mnt).f_ffree
    for i in range(40):
        p = mnt / f"c{i % 3}"
        p.write_bytes(os.urandom(1000 + i))
        if i % 2:
            p.unlink()
    survivors = [p for p in mnt.iterdir() if p.name.startswith("c")]
    for p in survivors:
        assert os.stat(p).st_nlink == 1
        p.unlink()
    assert wait_free_inodes(mnt, free0) == free0
    m.unmount()  # e2fsck -fn clean


def test_space_of_a_removed_file_is_there_for_the_next_one(chanos_mount):
    """An unlinked file's blocks are freed when the host kernel forgets its inode, which
    the front end sends on while it waits for requests; a request that allocates sends
    the forgets still waiting first. So a file as large as the free space, removed and
    written again right away, fits every time, and the free space comes back."""
    mnt = chanos_mount.mnt
    st = os.statvfs(mnt)
    free0 = st.f_bavail * st.f_frsize
    size = (free0 - (8 << 20)) & ~0xFFFFF  # all but 8 MiB (metadata, directory blocks)
    chunk = os.urandom(1 << 20)
    for round in range(3):
        path = mnt / f"big{round}"
        with open(path, "wb") as f:  # ENOSPC here if the last one's blocks were not free
            for _ in range(size >> 20):
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        os.unlink(path)
    deadline = time.monotonic() + 30
    while os.statvfs(mnt).f_bavail * st.f_frsize != free0:
        assert time.monotonic() < deadline, "the removed files' space did not come back"
        time.sleep(0.05)
