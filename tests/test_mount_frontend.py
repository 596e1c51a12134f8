"""The FUSE front end on a real FUSE mount, served from an in-memory fake kernel.

These tests pin down the front end's own duties independently of the file system:
lookup references given back exactly (readdirplus included), readdir continuation across
small batches and entries without attributes, errno and unexpected-failure mapping,
large writes as single messages, open-flag adaptation for the writeback cache. The fake
kernel (tests/programs/fakekernel.py) asserts on every Forget that the front end never
gives back more references than the kernel handed out.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "programs"))

from mountlib import PROGRAMS, is_mounted, require_fuse

pytestmark = pytest.mark.mount


class FakeMount:
    def __init__(self, tmp: Path, *extra: str) -> None:
        require_fuse()
        self.mnt = tmp / "mnt"
        self.mnt.mkdir()
        self.stats = tmp / "stats.json"
        self.errlog = tmp / "daemon.log"
        with open(self.errlog, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, str(PROGRAMS / "fakekernel.py"), str(self.mnt), str(self.stats),
                 *extra],
                stdout=log,
                stderr=subprocess.STDOUT,
            )  # fmt: skip
        deadline = time.monotonic() + 30
        while not is_mounted(self.mnt):
            assert self.proc.poll() is None, self.errlog.read_text()
            assert time.monotonic() < deadline, "fake mount not ready"
            time.sleep(0.02)

    def snapshot(self) -> dict:
        """Ask the daemon for its counters (it writes them on SIGUSR1)."""
        before = self.stats.stat().st_mtime_ns if self.stats.exists() else 0
        self.proc.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + 10
        while not self.stats.exists() or self.stats.stat().st_mtime_ns == before:
            assert time.monotonic() < deadline, "no stats from the daemon"
            time.sleep(0.01)
        return json.loads(self.stats.read_text())

    def close(self) -> dict:
        subprocess.run(["fusermount3", "-u", str(self.mnt)], check=False)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            subprocess.run(["fusermount3", "-uz", str(self.mnt)], check=False)
            raise
        return json.loads(self.stats.read_text())


@pytest.fixture
def fake(tmp_path):
    m = FakeMount(tmp_path)
    yield m
    if m.proc.poll() is None:
        m.close()


def drop_caches() -> None:
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("2\n")
    except OSError:
        pytest.skip("needs root to drop the dentry and inode caches")


def all_references_given_back(fake: FakeMount) -> dict:
    """Drop the host's caches; every reference the host kernel took has been forgotten,
    and exactly what the fake kernel handed out was given back to it (it asserts on
    over-forgetting). -> the daemon's counters."""
    drop_caches()
    time.sleep(0.3)
    snap = fake.snapshot()
    assert snap["kernel_lookups"] == {}
    assert snap["unexpected_errors"] == 0
    return snap


def test_lookup_references_are_returned_exactly(fake):
    m = fake.mnt
    (m / "d").mkdir()
    for i in range(40):  # more than one ReadDir batch (the fake returns 7 at a time)
        (m / "d" / f"f{i:02d}").write_bytes(b"x" * i)
    os.symlink("d/f01", m / "s")
    os.link(m / "d" / "f02", m / "h")
    # readdirplus (ls -l), lookups (stat), and both for the same inodes, twice
    for _ in range(2):
        names = sorted(os.listdir(m / "d"))
        assert names == [f"f{i:02d}" for i in range(40)]
        subprocess.run(["ls", "-lR", str(m)], check=True, capture_output=True)
        for n in names:
            os.stat(m / "d" / n)
    snap = fake.snapshot()
    assert snap["kernel_lookups"], "the host kernel holds references while cached"
    snap = all_references_given_back(fake)
    assert snap["calls"]["Forget"] > 0


def test_readdir_read_ahead_references_are_given_back(fake):
    m = fake.mnt
    (m / "big").mkdir()
    names = [f"entry-with-a-longer-name-{i:04d}" for i in range(250)]
    for n in names:
        (m / "big" / n).touch()
    drop_caches()
    # A ReadDir batch holds more than one READDIR buffer takes: listings continue from
    # the entries read ahead, and a listing abandoned part-way gives them back.
    assert sorted(os.listdir(m / "big")) == names
    for _ in range(3):
        with os.scandir(m / "big") as it:
            next(it)
    assert sorted(os.listdir(m / "big")) == names
    all_references_given_back(fake)


def test_readdir_continues_across_batches_and_fetches_missing_attrs(fake):
    m = fake.mnt
    (m / "d").mkdir()
    want = {}
    for i in range(100):
        (m / "d" / f"n{i:03d}").write_bytes(b"y" * (i * 10))
        want[f"n{i:03d}"] = i * 10
    drop_caches()
    got = {e.name: e.stat().st_size for e in os.scandir(m / "d")}
    assert got == want
    # the directory listing a shell sees includes . and ..
    out = subprocess.run(["ls", "-a", str(m / "d")], capture_output=True, text=True).stdout
    assert out.split()[:2] == [".", ".."]


def test_concurrent_listing_while_renaming_sees_every_stable_entry(fake):
    m = fake.mnt
    (m / "d").mkdir()
    for i in range(60):
        (m / "d" / f"stable{i:02d}").touch()
    proc = subprocess.Popen(
        ["bash", "-c", f"for i in $(seq 200); do touch {m}/d/t$i; mv {m}/d/t$i {m}/d/u$i; done"]
    )
    try:
        while proc.poll() is None:
            seen = [n for n in os.listdir(m / "d") if n.startswith("stable")]
            assert sorted(seen) == [f"stable{i:02d}" for i in range(60)]
    finally:
        proc.wait()


def test_errors_map_to_errno(fake):
    m = fake.mnt
    with pytest.raises(FileNotFoundError):
        os.stat(m / "missing")
    (m / "d").mkdir()
    (m / "d" / "f").touch()
    with pytest.raises(OSError) as ei:
        os.rmdir(m / "d")
    assert ei.value.errno == errno.ENOTEMPTY
    with pytest.raises(FileExistsError):
        os.mkdir(m / "d")
    with pytest.raises(OSError) as ei:
        os.getxattr(m / "d" / "f", "user.none")
    assert ei.value.errno == errno.ENODATA
    with pytest.raises(OSError) as ei:
        os.rename(m / "d", m / "d" / "f")  # the fake says ENOTDIR: d/f is a file
    assert ei.value.errno in (errno.ENOTDIR, errno.EINVAL)


def test_negative_lookups_are_cached_and_invalidated_by_create(fake):
    m = fake.mnt
    for _ in range(20):
        assert not (m / "ghost").exists()
    calls = fake.snapshot()["calls"]
    assert calls.get("Lookup", 0) <= 2, "negative entries are cached by the host kernel"
    (m / "ghost").write_text("now here")
    assert (m / "ghost").read_text() == "now here"


def test_large_writes_arrive_as_one_message_per_mebibyte(fake):
    data = os.urandom(8 << 20)
    p = fake.mnt / "big"
    with open(p, "wb") as f:
        f.write(data)
        os.fsync(f.fileno())
    assert p.read_bytes() == data
    snap = fake.snapshot()
    assert snap["max_write"] >= 1 << 20  # the host kernel's largest request: 1 MiB
    assert snap["calls"]["Write"] <= 16


@pytest.mark.parametrize("mode", ["writeback", "nowriteback"])
def test_close_costs_no_flush_request_and_keeps_the_data(tmp_path, mode):
    m = FakeMount(tmp_path, *([mode] if mode == "nowriteback" else []))
    try:
        for i in range(5):
            with open(m.mnt / f"f{i}", "wb") as f:
                f.write(bytes([i]) * 5000)
        assert [(m.mnt / f"f{i}").read_bytes() for i in range(5)] == [
            bytes([i]) * 5000 for i in range(5)
        ]
    finally:
        calls = m.close()["calls"]  # after unmount: every (asynchronous) RELEASE is in
    # The first FLUSH is declined with ENOSYS and the host kernel sends no more.
    assert calls.get("Flush", 0) == 0
    assert calls["Release"] == 10


def test_append_and_write_only_opens_work_with_writeback_cache(fake):
    p = fake.mnt / "log"
    with open(p, "w") as f:  # O_WRONLY: the host kernel still reads pages to fill them
        f.write("a" * 5000)
    with open(p, "a") as f:  # O_APPEND is done by the host kernel; the fs must not redo it
        f.write("b" * 10)
    with open(p, "r+b") as f:
        f.seek(4998)
        f.write(b"XY")
    assert p.read_bytes() == b"a" * 4998 + b"XY" + b"b" * 10


def test_unexpected_failure_answers_eio_and_mount_survives(tmp_path):
    # Every 3rd Lookup raises a non-OSError in the fake kernel.
    m = FakeMount(tmp_path, "crash=Lookup:3")
    try:
        (m.mnt / "f").write_text("x")
        errors = 0
        for _ in range(40):
            drop_caches()
            try:
                os.stat(m.mnt / "f")
            except OSError as exc:
                assert exc.errno == errno.EIO
                errors += 1
        assert errors > 0
        assert (m.mnt / "f").read_text() == "x"  # still serving
        snap = m.snapshot()
        assert snap["unexpected_errors"] == errors
    finally:
        m.close()
    assert "failed" in m.errlog.read_text()


def _direct_writes(path: Path, blocks: int, who: list[str] | None = None) -> None:
    """``blocks`` aligned 4 KiB writes of b"A", b"B", ... through an O_DIRECT
    descriptor, in a process run as ``who`` (a command prefix such as setpriv's)."""
    code = (
        "import mmap, os, sys\n"
        "fd = os.open(sys.argv[1], os.O_WRONLY | os.O_DIRECT)\n"
        "buf = mmap.mmap(-1, 4096)\n"  # page-aligned, as O_DIRECT wants
        "for i in range(int(sys.argv[2])):\n"
        "    buf[:] = bytes([65 + i]) * 4096\n"
        "    assert os.pwrite(fd, buf, i * 4096) == 4096\n"
        "os.close(fd)\n"
    )
    subprocess.run([*(who or []), sys.executable, "-c", code, str(path), str(blocks)], check=True)


def test_direct_io_writes_cost_one_request_and_carry_what_to_drop(tmp_path):
    """An O_DIRECT open gets a direct-I/O handle: each write(2) is one WRITE, with no
    GETXATTR of security.capability before it, and it carries what the write takes away
    from the file. A buffered write still goes the host kernel's own way: it asks for
    the capability first and drops what is needed itself."""
    from chanos.compat.fuse_ops import DIRECT_WRITES_DROP_CACHED_PAGES

    if not DIRECT_WRITES_DROP_CACHED_PAGES:
        pytest.skip("O_DIRECT keeps the host kernel's path before Linux 6.6")
    m = FakeMount(tmp_path, "nowriteback")
    try:
        p = m.mnt / "data"
        p.write_bytes(bytes(8 * 4096))
        before = m.snapshot()
        _direct_writes(p, 8)
        with open(p, "r+b") as f:
            f.write(b"z" * 100)
        after = m.snapshot()
        data = p.read_bytes()
    finally:
        m.close()
    assert data[:100] == b"z" * 100
    assert data[100:4096] == b"A" * 3996 and data[4096 * 7 :] == b"H" * 4096
    calls = {k: v - before["calls"].get(k, 0) for k, v in after["calls"].items()}
    drops = after["write_drops"][len(before["write_drops"]) :]
    # DROP_CAPABILITY, and DROP_SET_ID too for an opener that is not root
    direct = 1 if os.geteuid() == 0 else 3
    assert drops == [direct] * 8 + [0]
    assert calls.get("GetXattr", 0) == 1  # before the buffered write only


def test_direct_io_is_not_used_with_the_writeback_cache(fake):
    p = fake.mnt / "data"
    p.write_bytes(bytes(2 * 4096))
    _direct_writes(p, 2)
    assert p.read_bytes() == b"A" * 4096 + b"B" * 4096
    assert set(fake.snapshot()["write_drops"]) == {0}


def test_host_kernel_release_is_read_from_its_leading_numbers():
    from chanos.compat.fuse_ops import _linux_release

    assert _linux_release("6.18.44-fc-v669") == (6, 18)
    assert _linux_release("6.6-rc1") == (6, 6)  # not 6.61
    assert _linux_release("5.15.0-91-generic") == (5, 15)
    assert _linux_release("unknown") == (0, 0)
